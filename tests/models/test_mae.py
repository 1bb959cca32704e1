"""The MaskedAutoencoder against the official model: keys, initialisation, forward pass and loss."""

import math

import pytest
import torch

from mae_lightning.models import MaskedAutoencoder, mae_vit_base_patch16
from mae_lightning.models.pos_embed import sincos_2d
from tests.helpers import TINY_MAE_3CH, tiny_mae
from tests.reference import official_forward


def tiny(**overrides):
    return tiny_mae(**{**TINY_MAE_3CH, **overrides})


# ---------------------------------------------------------------------------- a reference forward pass
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("in_chans,img_size", [(3, 16), (1, (16, 24)), (13, 8)])
def test_forward_equals_the_official_model(norm_pix_loss, in_chans, img_size):
    torch.manual_seed(0)
    model = tiny(in_chans=in_chans, img_size=img_size, norm_pix_loss=norm_pix_loss).eval()
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    imgs = torch.randn(3, in_chans, h, w)
    noise = torch.rand(3, model.num_patches)
    loss, pred, mask = model(imgs, 0.75, noise)
    ref_loss, ref_pred, ref_mask = official_forward(model, imgs, 0.75, noise)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- interface
def test_output_shapes_and_mask_count():
    model = tiny()
    loss, pred, mask = model(torch.randn(2, 3, 16, 16))
    assert loss.ndim == 0
    assert pred.shape == (2, 16, 4 * 4 * 3)
    assert mask.shape == (2, 16)
    assert torch.equal(mask.sum(dim=1), torch.tensor([12.0, 12.0]))


def test_state_dict_keys_are_the_official_ones():
    model = tiny(depth=1, decoder_depth=1)
    block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    official = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "decoder_embed.weight",
        "decoder_embed.bias",
        "mask_token",
        "decoder_pos_embed",
        "decoder_norm.weight",
        "decoder_norm.bias",
        "decoder_pred.weight",
        "decoder_pred.bias",
        *(f"blocks.0.{k}" for k in block),
        *(f"decoder_blocks.0.{k}" for k in block),
    }
    assert set(model.state_dict()) == official


def test_official_full_checkpoint_shapes_load_strictly():
    """A ViT-B state dict with the official shapes (e.g. mae_pretrain_vit_base_full.pth) loads with strict=True."""
    model = mae_vit_base_patch16(norm_pix_loss=True)
    shapes = {
        "pos_embed": (1, 197, 768),
        "decoder_pos_embed": (1, 197, 512),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.11.mlp.fc1.weight": (3072, 768),
        "decoder_blocks.7.attn.qkv.weight": (1536, 512),
        "decoder_pred.weight": (768, 512),
        "mask_token": (1, 1, 512),
    }
    state = model.state_dict()
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    fresh = {k: torch.randn_like(v) for k, v in state.items()}
    assert not model.load_state_dict(fresh, strict=True).missing_keys
    # Encoder parameters of ViT-B/16 (timm's vit_base_patch16_224 without its head): 85.8M
    encoder = sum(v.numel() for k, v in state.items() if not k.startswith(("decoder", "mask_token")))
    assert encoder == 85_798_656


# ---------------------------------------------------------------------------- what the encoder sees
def test_encoder_output_does_not_depend_on_masked_pixels():
    torch.manual_seed(0)
    model = tiny().eval()
    imgs = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
    pixel_mask = model.unpatchify(mask[..., None].expand(-1, -1, 4 * 4 * 3))  # 1 on removed pixels
    changed = imgs + 100.0 * torch.randn_like(imgs) * pixel_mask
    latent_changed, _, _ = model.forward_encoder(changed, 0.75, noise)
    assert torch.equal(latent, latent_changed)
    assert latent.shape == (2, 1 + 4, 32)
    # and it does depend on the visible ones
    latent_visible, _, _ = model.forward_encoder(imgs + (1 - pixel_mask), 0.75, noise)
    assert not torch.allclose(latent, latent_visible)


# ---------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_mse_over_masked_patches_only(norm_pix_loss):
    model = tiny(norm_pix_loss=norm_pix_loss)
    imgs = torch.randn(2, 3, 16, 16)
    pred = torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5]] = 1
    mask[1, [0, 2, 3]] = 1
    expected, count = 0.0, 0
    for n in range(2):
        for i in range(16):
            if mask[n, i]:
                row, col = divmod(i, 4)
                target = imgs[n, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4].permute(1, 2, 0).reshape(-1)
                if norm_pix_loss:
                    mean = target.mean()
                    var = ((target - mean) ** 2).sum() / (target.numel() - 1)
                    target = (target - mean) / math.sqrt(var + 1e-6)
                expected += ((pred[n, i] - target) ** 2).mean().item()
                count += 1
    assert math.isclose(model.forward_loss(imgs, pred, mask).item(), expected / count, rel_tol=1e-5)
    # predictions on visible patches do not count
    other = pred + 5.0 * (1 - mask)[..., None]
    assert torch.equal(model.forward_loss(imgs, other, mask), model.forward_loss(imgs, pred, mask))


# ---------------------------------------------------------------------------- initialisation
def test_initialisation_matches_official():
    torch.manual_seed(0)
    model = MaskedAutoencoder(
        img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1
    )
    assert torch.equal(model.pos_embed[0], sincos_2d(64, (8, 8), cls_token=True))
    assert torch.equal(model.decoder_pos_embed[0], sincos_2d(32, (8, 8), cls_token=True))
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound, name
            assert module.weight.abs().max() > 0.9 * bound, name  # uniform over the whole xavier range
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        if isinstance(module, torch.nn.LayerNorm):
            assert module.eps == 1e-6
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    w = model.patch_embed.proj.weight
    bound = math.sqrt(6 / (w.shape[0] + w[0].numel()))
    assert bound * 0.9 < w.abs().max() <= bound
    for token in (model.cls_token, model.mask_token):
        assert 0.01 < token.std().item() < 0.03


def test_initialisation_of_the_tokens_has_std_002():
    torch.manual_seed(0)
    model = tiny(embed_dim=4096, num_heads=1, depth=0, decoder_embed_dim=4096, decoder_num_heads=1, decoder_depth=0)
    assert abs(model.cls_token.std().item() - 0.02) < 0.001
    assert abs(model.mask_token.std().item() - 0.02) < 0.001


# ---------------------------------------------------------------------------- training signal
def test_gradients_reach_encoder_and_decoder_and_tables_stay_fixed():
    torch.manual_seed(0)
    model = tiny()
    tables = (model.pos_embed.detach().clone(), model.decoder_pos_embed.detach().clone())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _, _ = model(torch.randn(4, 3, 16, 16))
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    optimizer.step()
    assert torch.equal(model.pos_embed, tables[0])
    assert torch.equal(model.decoder_pos_embed, tables[1])


# ---------------------------------------------------------------------------- geometry and errors
@pytest.mark.parametrize("in_chans", [1, 3, 4, 13])
def test_any_channel_count_and_non_square_images(in_chans):
    model = tiny(in_chans=in_chans, img_size=(8, 20))
    loss, pred, mask = model(torch.randn(2, in_chans, 8, 20))
    assert pred.shape == (2, 2 * 5, 16 * in_chans)
    assert model.unpatchify(pred).shape == (2, in_chans, 8, 20)
    assert torch.isfinite(loss)


def test_invalid_configurations_raise_value_errors_naming_the_values():
    with pytest.raises(ValueError, match=r"img_size=\(18, 18\) is not divisible by patch_size=4"):
        tiny(img_size=18)
    with pytest.raises(ValueError, match="embed_dim must be divisible by 4.*got 30"):
        tiny(embed_dim=30, num_heads=3)
    with pytest.raises(ValueError, match="width 32 is not divisible by num_heads=5"):
        tiny(num_heads=5)
    with pytest.raises(ValueError, match="in_chans must be positive"):
        tiny(in_chans=0)
    model = tiny()
    for ratio in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=f"mask_ratio must be in the open interval \\(0, 1\\), got {ratio}"):
            model(torch.randn(1, 3, 16, 16), ratio)
    with pytest.raises(ValueError, match="keeps no patch visible"):
        model(torch.randn(1, 3, 16, 16), 0.99)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 16, 16\), got \(1, 1, 16, 16\)"):
        model(torch.randn(1, 1, 16, 16))


# ---------------------------------------------------------------------------- embeddings
def test_embeddings_without_masking():
    torch.manual_seed(0)
    model = tiny().eval()
    imgs = torch.randn(3, 3, 16, 16)
    tokens = model.forward_features(imgs)
    assert tokens.shape == (3, 17, 32)
    assert torch.equal(model.embed(imgs, "cls"), tokens[:, 0])
    assert torch.equal(model.embed(imgs, "mean"), tokens[:, 1:].mean(dim=1))
    # the same as the masked encoder keeping every patch in its original order
    latent, _, _ = model.forward_encoder(imgs, 0.0, torch.arange(16.0).expand(3, 16))
    torch.testing.assert_close(latent, tokens)
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean'"):
        model.embed(imgs, "max")


# ---------------------------------------------------------------------------- the fast training path
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("in_chans,img_size", [(3, 16), (1, (16, 24)), (5, 8)])
def test_forward_train_equals_the_straightforward_loss(norm_pix_loss, in_chans, img_size):
    """The optimised path (visible-only patch embedding, pixel head on removed patches) keeps the math."""
    torch.manual_seed(0)
    model = tiny(in_chans=in_chans, img_size=img_size, norm_pix_loss=norm_pix_loss)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    imgs = torch.randn(4, in_chans, h, w)
    noise = torch.rand(4, model.num_patches)
    fast, latent, _ = model.forward_train(imgs, 0.75, noise)
    torch.testing.assert_close(latent, model.forward_encoder(imgs, 0.75, noise)[0])
    reference, _, _ = official_forward(model, imgs, 0.75, noise)
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-5)
    fast.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    reference.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(fast_grads[name], param.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_visible_patch_embedding_equals_the_convolution():
    torch.manual_seed(0)
    model = tiny(in_chans=4, img_size=(8, 12))
    imgs = torch.randn(3, 4, 8, 12)
    ids = torch.rand(3, 6).argsort(dim=1)[:, :2]
    expected = torch.gather(model.patch_embed(imgs), 1, ids.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(model.patch_embed.embed_patches(model.patchify(imgs), ids), expected)


def test_bf16_autocast_loss_is_within_one_percent_of_fp32():
    """The CPU bf16 switch (`trainer.precision: bf16-mixed`) keeps the loss of the same batch and masks."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(
        img_size=32, patch_size=4, embed_dim=192, depth=4, num_heads=3, decoder_embed_dim=128, decoder_depth=2,
        decoder_num_heads=4, norm_pix_loss=True,
    )  # fmt: skip
    imgs = torch.randn(8, 3, 32, 32)
    noise = torch.rand(8, model.num_patches)
    fp32 = model.forward_train(imgs, 0.75, noise).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.forward_train(imgs, 0.75, noise).loss
    assert bf16.dtype == torch.float32  # the loss reduction runs in fp32 under autocast
    assert abs(bf16.item() - fp32.item()) <= 1e-2 * abs(fp32.item())


# ---------------------------------------------------------------------------- one loss, every path
class L1MaskedAutoencoder(MaskedAutoencoder):
    """A researcher's change of loss: one method. Records what training scored, to check the logged value."""

    def patch_loss(self, pred, target):
        self.scored = (pred.detach().clone(), target.detach().clone())
        return (pred - target).abs().mean(dim=-1)


def test_forward_and_forward_train_share_the_subclass_loss():
    torch.manual_seed(0)
    model = L1MaskedAutoencoder(**{**TINY_MAE_3CH, "norm_pix_loss": True})
    imgs = torch.randn(4, 3, 16, 16)
    noise = torch.rand(4, model.num_patches)
    loss, pred, mask = model(imgs, 0.75, noise)
    fast = model.forward_train(imgs, 0.75, noise).loss
    torch.testing.assert_close(fast, loss)
    target = model.target(imgs)
    expected = ((pred - target).abs().mean(dim=-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_overriding_patch_loss_changes_the_training_loss(tmp_path):
    """Through a real Trainer.fit: the logged train/loss_step is the subclass's loss of the very patches trained on."""
    from lightning.pytorch import Trainer

    from mae_lightning import DigitsDataModule, MAEPretraining

    def first_step_loss(model_class):
        torch.manual_seed(0)
        model = model_class(**{**TINY_MAE_3CH, "in_chans": 1})
        trainer = Trainer(
            accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(MAEPretraining(model, warmup_epochs=0), DigitsDataModule(img_size=16, batch_size=8, num_workers=0))
        return float(trainer.callback_metrics["train/loss_step"]), model

    base, _ = first_step_loss(MaskedAutoencoder)
    l1, model = first_step_loss(L1MaskedAutoencoder)
    pred, target = model.scored  # the removed patches of the first step, the same in both runs (same seeds)
    assert pred.shape == (8, 12, 16)  # the fast path: 12 removed patches of 16 per image, nothing visible
    assert l1 == pytest.approx(float((pred - target).abs().mean()), rel=1e-6)
    assert base == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-5)
    assert abs(l1 - base) > 1e-3


def test_decoder_fp32_runs_the_decoder_in_full_precision_under_autocast():
    imgs, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    for decoder_fp32, dtype in ((False, torch.bfloat16), (True, torch.float32)):
        model = tiny_mae(seed=0, **TINY_MAE_3CH, decoder_fp32=decoder_fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.forward_train(imgs, 0.75, noise).loss.isfinite()
            assert model(imgs, 0.75, noise)[1].dtype == dtype
