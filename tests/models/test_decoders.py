"""The cheaper decoders of CrossMAE (Fu et al., 2024): partial reconstruction and the cross-attention decoder.

The defaults must stay the paper's decoder and loss bit for bit; the reference below is the decoder and the fast
training path as they were before these settings existed, line for line.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mae_lightning.cli import main
from mae_lightning.masking import BlockMasking, GridMasking, RandomMasking, mask_from_scores
from mae_lightning.models import MaskedAutoencoder
from mae_lightning.models.vit import CrossAttention, CrossAttentionBlock
from mae_lightning.ops import gather_tokens
from tests.helpers import FAST_16PX, QUICKSTART, REPO, TINY_MAE_3CH, tiny_mae
from tests.reference import official_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors gain nothing from threads

TINY = {**TINY_MAE_3CH, "decoder_depth": 2}  # two decoder blocks: the cross decoder stacks them
NUM_PATCHES, NUM_REMOVED = 16, 12  # TINY's patches, and those that mask_ratio 0.75 removes

PRESETS = {
    "partial_reconstruction": str(REPO / "configs" / "presets" / "partial_reconstruction.yaml"),
    "cross_decoder": str(REPO / "configs" / "presets" / "cross_decoder.yaml"),
}


def _class_name(obj) -> str:
    return type(obj).__name__


def tiny(**overrides) -> MaskedAutoencoder:
    return tiny_mae(**{**TINY, **overrides})


class RecordingAutoencoder(MaskedAutoencoder):
    """Records the predictions and targets that the loss scores."""

    def patch_loss(self, pred, target):
        self.scored = (pred.detach().clone(), target.detach().clone())
        return super().patch_loss(pred, target)


# ---------------------------------------------------------------------------- the paper's decoder, as it was
def reference_decode(model, latent, ids_restore):
    """The decoder before partial reconstruction: every patch in patch order, cls dropped, after decoder_norm."""
    x = model.decoder_embed(latent)
    n, _, _ = x.shape
    num_masked = ids_restore.shape[1] + 1 - x.shape[1]
    x_ = torch.cat([x[:, 1:, :], model.mask_token.expand(n, num_masked, -1)], dim=1)
    x_ = gather_tokens(x_, ids_restore)
    x = torch.cat([x[:, :1, :], x_], dim=1) + model.decoder_pos_embed
    for block in model.decoder_blocks:
        x = block(x)
    return model.decoder_norm(x[:, 1:, :])


def reference_forward_train(model, imgs, mask_ratio, noise=None):
    ids_shuffle, ids_restore, _, len_keep = model._masking(imgs, mask_ratio, noise)
    latent = model._encode_visible(imgs, ids_shuffle[:, :len_keep])
    ids_removed = ids_shuffle[:, len_keep:]
    pred = model.decoder_pred(gather_tokens(reference_decode(model, latent, ids_restore), ids_removed))
    target = official_target(model, gather_tokens(model.patchify(imgs), ids_removed))
    return model.patch_loss(pred, target).mean(), latent


def reference_forward(model, imgs, mask_ratio, noise=None):
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    pred = model.decoder_pred(reference_decode(model, latent, ids_restore))
    return model.forward_loss(imgs, pred, mask), pred, mask


def _run_and_grads(fn, model, imgs, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # the masks are drawn by the global generator, as in training
    outputs = fn(imgs, 0.75)
    outputs[0].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return outputs, grads


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("masking", [RandomMasking(), BlockMasking()], ids=_class_name)
@pytest.mark.parametrize("path", ["forward_train", "forward"])
def test_keep_ratio_one_is_the_papers_decoder_bit_for_bit(path, masking, norm_pix_loss):
    torch.manual_seed(0)
    model = tiny(norm_pix_loss=norm_pix_loss, masking=masking, decoder_keep_ratio=1.0).train()
    imgs = torch.randn(4, 3, 16, 16)
    reference = reference_forward_train if path == "forward_train" else reference_forward
    expected, expected_grads = _run_and_grads(lambda *a: reference(model, *a), model, imgs, seed=1)
    actual, actual_grads = _run_and_grads(getattr(model, path), model, imgs, seed=1)
    if path == "forward_train":
        assert actual.terms == {}
        actual = (actual.loss, actual.latent)
    for got, want in zip(actual, expected, strict=True):
        assert torch.equal(got, want)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert torch.equal(actual_grads[name], grad), name


# ---------------------------------------------------------------------------- partial reconstruction
@pytest.mark.parametrize(
    ("num_removed", "keep_ratio", "expected"),
    [(12, 1.0, 12), (12, 0.5, 6), (12, 0.25, 3), (147, 0.5, 74), (147, 0.25, 37), (3, 0.1, 1)],
)
def test_number_of_scored_patches(num_removed, keep_ratio, expected):
    assert tiny(decoder_keep_ratio=keep_ratio).num_scored(num_removed) == expected


@pytest.mark.parametrize("keep_ratio", [0.0, -0.5, 1.5])
def test_keep_ratio_outside_zero_one_is_refused(keep_ratio):
    with pytest.raises(ValueError, match=f"decoder_keep_ratio must be in \\(0, 1\\], got {keep_ratio}"):
        tiny(decoder_keep_ratio=keep_ratio)


def test_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder must be 'self', 'cross' or 'local', got 'mlp'"):
        tiny(decoder="mlp")


def _fixed_masks(model, n, seed=0):
    noise = model.masking.scores(n, model.grid_size, 0.75, generator=torch.Generator().manual_seed(seed))
    ids_shuffle, _, _, len_keep = mask_from_scores(noise, 0.75, (n, model.num_patches))
    return noise, ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]


@pytest.mark.parametrize("decoder", ["self", "cross"])
@pytest.mark.parametrize("masking", [RandomMasking(), BlockMasking(), GridMasking()], ids=_class_name)
def test_training_scores_only_the_chosen_removed_patches(masking, decoder):
    torch.manual_seed(0)
    model = RecordingAutoencoder(**TINY, masking=masking, decoder=decoder, decoder_keep_ratio=0.5).train()
    imgs = torch.randn(4, 3, 16, 16)
    noise, _, ids_removed = _fixed_masks(model, 4)
    torch.manual_seed(7)
    loss = model.forward_train(imgs, 0.75, noise).loss
    torch.manual_seed(7)
    chosen = model.scored_patches(ids_removed)  # the same draw of the global generator

    assert chosen.shape == (4, NUM_REMOVED // 2)
    for row, removed in zip(chosen.tolist(), ids_removed.tolist(), strict=True):
        assert len(set(row)) == len(row) and set(row) <= set(removed)
    pred, target = model.scored
    assert pred.shape == target.shape == (4, NUM_REMOVED // 2, 4 * 4 * 3)
    assert torch.equal(target, gather_tokens(model.patchify(imgs), chosen))
    assert torch.equal(loss, ((pred - target) ** 2).mean(dim=-1).mean())  # patch_loss, averaged


def test_partial_decoder_sees_the_visible_and_the_chosen_tokens_only():
    """One sequence of cls, visible and chosen mask tokens: the mask tokens of the other removed patches are absent."""
    torch.manual_seed(0)
    model = RecordingAutoencoder(**TINY, decoder_keep_ratio=0.25).train()
    imgs = torch.randn(2, 3, 16, 16)
    noise, ids_keep, ids_removed = _fixed_masks(model, 2)
    torch.manual_seed(3)
    model.forward_train(imgs, 0.75, noise)
    torch.manual_seed(3)
    chosen = model.scored_patches(ids_removed)

    latent = model.forward_encoder(imgs, 0.75, noise)[0]
    table = model.decoder_pos_embed[0]
    x = model.decoder_embed(latent)
    sequence = torch.cat(
        [x[:, :1] + table[0], x[:, 1:] + table[1:][ids_keep], model.mask_token + table[1:][chosen]], dim=1
    )  # in masking order: attention does not depend on the order
    for block in model.decoder_blocks:
        sequence = block(sequence)
    expected = model.decoder_pred(model.decoder_norm(sequence[:, 1 + ids_keep.shape[1] :]))
    torch.testing.assert_close(model.scored[0], expected.detach(), atol=1e-6, rtol=1e-5)


def test_the_subset_follows_the_global_seed():
    torch.manual_seed(0)
    model = tiny(decoder_keep_ratio=0.5).train()
    imgs = torch.randn(4, 3, 16, 16)
    _, _, ids_removed = _fixed_masks(model, 4)

    def draw(seed):
        torch.manual_seed(seed)
        return model.scored_patches(ids_removed)

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    # A whole step, masks included, repeats from the seed: a resumed run restores the generator's state.
    losses = []
    for _ in range(2):
        torch.manual_seed(11)
        losses.append(model.forward_train(imgs, 0.75).loss)
    assert torch.equal(*losses)


def test_keep_ratio_one_draws_no_random_numbers():
    model = tiny().train()
    ids_removed = torch.arange(24).reshape(2, 12)
    state = torch.get_rng_state()
    assert model.scored_patches(ids_removed) is ids_removed
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("decoder", ["self", "cross"])
def test_evaluation_and_forward_reconstruct_every_removed_patch(decoder):
    """val/loss (forward_train in eval mode, fixed masks) is the same for every keep ratio."""
    torch.manual_seed(0)
    partial = RecordingAutoencoder(**TINY, decoder=decoder, decoder_keep_ratio=0.5)
    full = RecordingAutoencoder(**TINY, decoder=decoder)
    full.load_state_dict(partial.state_dict())
    imgs = torch.randn(4, 3, 16, 16)
    noise, _, _ = _fixed_masks(partial, 4)

    loss = partial.eval().forward_train(imgs, 0.75, noise).loss
    assert partial.scored[0].shape == (4, NUM_REMOVED, 4 * 4 * 3)
    assert torch.equal(loss, full.eval().forward_train(imgs, 0.75, noise).loss)
    for model in (partial.train(), partial.eval()):
        _, pred, mask = model(imgs, 0.75, noise)
        assert pred.shape == (4, NUM_PATCHES, 4 * 4 * 3)
        assert torch.equal(mask.sum(dim=1), torch.full((4,), float(NUM_REMOVED)))


# ---------------------------------------------------------------------------- the cross-attention decoder
def test_cross_attention_is_softmax_of_queries_against_the_context():
    torch.manual_seed(0)
    attn = CrossAttention(16, num_heads=2)
    x, context = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    q = attn.q(x).reshape(3, 5, 2, 8).transpose(1, 2)
    k, v = attn.kv(context).reshape(3, 7, 2, 2, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(attn(x, context), expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_block_is_pre_norm_with_residuals():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, num_heads=2, mlp_ratio=2.0)
    x, context = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    h = x + block.cross_attn(block.norm1(x), context)
    expected = h + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(h))))
    torch.testing.assert_close(block(x, context), expected)


def test_cross_decoder_leaves_the_encoder_and_the_shared_keys_as_they_are():
    self_model, cross_model = tiny(), tiny(decoder="cross")
    own = {key: tuple(value.shape) for key, value in cross_model.state_dict().items()}
    paper = {key: tuple(value.shape) for key, value in self_model.state_dict().items()}
    # Everything but the blocks of the decoder: encoder, decoder_embed, mask_token, tables, decoder_norm/pred.
    assert {k: s for k, s in own.items() if not k.startswith("decoder_blocks.")} == {
        k: s for k, s in paper.items() if not k.startswith("decoder_blocks.")
    }
    block = {
        "norm1.weight": (16,), "norm1.bias": (16,),
        "cross_attn.q.weight": (16, 16), "cross_attn.q.bias": (16,),
        "cross_attn.kv.weight": (32, 16), "cross_attn.kv.bias": (32,),
        "cross_attn.proj.weight": (16, 16), "cross_attn.proj.bias": (16,),
        "norm2.weight": (16,), "norm2.bias": (16,),
        "mlp.fc1.weight": (64, 16), "mlp.fc1.bias": (64,), "mlp.fc2.weight": (16, 64), "mlp.fc2.bias": (16,),
    }  # fmt: skip
    expected = {f"decoder_blocks.{i}.{key}": shape for i in range(2) for key, shape in block.items()}
    assert {k: s for k, s in own.items() if k.startswith("decoder_blocks.")} == expected
    # An encoder trained with either decoder loads into the other.
    encoder = {k: v for k, v in cross_model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    assert not self_model.load_state_dict(encoder, strict=False).unexpected_keys


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_cross_decoder_gradients_reach_every_parameter_that_learns(keep_ratio):
    torch.manual_seed(0)
    model = tiny(decoder="cross", decoder_keep_ratio=keep_ratio).train()
    loss = model.forward_train(torch.randn(4, 3, 16, 16), 0.75).loss
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name  # the sin-cos tables stay fixed


def test_cross_queries_do_not_see_each_other():
    """A removed patch's prediction is the same whether the other patches are queried too (forward) or not."""
    torch.manual_seed(0)
    model = RecordingAutoencoder(**TINY, decoder="cross").eval()
    imgs = torch.randn(3, 3, 16, 16)
    noise, _, ids_removed = _fixed_masks(model, 3)
    _, pred, _ = model(imgs, 0.75, noise)  # every patch queried
    model.forward_train(imgs, 0.75, noise)  # the removed ones only
    torch.testing.assert_close(model.scored[0], gather_tokens(pred, ids_removed), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("decoder", "keep_ratio"), [("cross", 1.0), ("cross", 0.5), ("self", 0.5)])
def test_cheaper_decoders_overfit_one_batch(decoder, keep_ratio):
    torch.manual_seed(0)
    model = tiny(decoder=decoder, decoder_keep_ratio=keep_ratio).train()
    # Smooth images: a hidden patch follows from the visible ones, so the loss can fall far.
    imgs = F.interpolate(torch.randn(8, 3, 2, 2), size=16, mode="bilinear", align_corners=True)
    noise, _, _ = _fixed_masks(model, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = model.forward_train(imgs, 0.75, noise).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    model.eval()  # every removed patch, as validation scores them
    assert model.forward_train(imgs, 0.75, noise).loss.item() < 0.5 * losses[0]


# ---------------------------------------------------------------------------- cost
def _decoder_flops(model: MaskedAutoencoder, imgs: torch.Tensor) -> int:
    """Forward FLOPs of a training step less those of the encoder: decoder, pixel head and loss."""
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as step:
        model.forward_train(imgs, 0.75)
    ids_keep = torch.arange(model.num_patches // 4).expand(imgs.shape[0], -1)
    with FlopCounterMode(display=False) as encoder:
        model._encode_visible(imgs, ids_keep)
    return step.get_total_flops() - encoder.get_total_flops()


def test_partial_reconstruction_and_the_cross_decoder_count_fewer_decoder_flops():
    sizes = dict(img_size=32, patch_size=4, embed_dim=64, depth=1, num_heads=4, decoder_embed_dim=64, decoder_depth=2)
    imgs = torch.randn(2, 3, 32, 32)
    flops = {
        setting: _decoder_flops(tiny(**sizes, **overrides).train(), imgs)
        for setting, overrides in {
            "paper": {},
            "half": {"decoder_keep_ratio": 0.5},
            "cross": {"decoder": "cross"},
            "cross, half": {"decoder": "cross", "decoder_keep_ratio": 0.5},
        }.items()
    }
    assert flops["half"] < 0.75 * flops["paper"]
    assert flops["cross"] < 0.75 * flops["paper"]
    assert flops["cross, half"] < 0.6 * flops["cross"]


# ---------------------------------------------------------------------------- the presets, end to end
FAST = [
    *FAST_16PX, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--model.init_args.warmup_epochs", "0",
    "--trainer.callbacks", '[{"class_path": "mae_lightning.ReconstructionCallback"}]',
]  # fmt: skip


@pytest.mark.parametrize(
    ("presets", "expected"),
    [
        (["partial_reconstruction"], ("self", 0.5)),
        (["cross_decoder"], ("cross", 1.0)),
        (["cross_decoder", "partial_reconstruction"], ("cross", 0.5)),  # CrossMAE's recipe
    ],
    ids=["partial", "cross", "cross+partial"],
)
def test_presets_train_two_steps_from_the_quickstart(presets, expected, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    configs = [arg for name in presets for arg in ("--config", PRESETS[name])]
    cli = main(["fit", "--config", QUICKSTART, *configs, *FAST])
    trainer, model = cli.trainer, cli.model.model
    assert trainer.global_step == 2
    assert (model.decoder, model.decoder_keep_ratio) == expected
    for key in ("train/loss_step", "val/loss", "val/recon_psnr_masked"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
