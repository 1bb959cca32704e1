"""Weights to and from Hugging Face transformers, checked against the real ``transformers`` classes, offline.

Equality is the test: the same image and the same ``noise`` give the same loss, predictions and mask in this
project's ``MaskedAutoencoder`` and transformers' ``ViTMAEForPreTraining`` (fp32, atol 1e-5; measured: 0 on CPU),
the same features in ``ViTModel``, the same logits in ``ViTForImageClassification``, in both directions.
Models are built from configs; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mae_lightning.checkpoint import ENCODER_KEYS, WeightsMismatchError, load_file, part, read_checkpoint
from mae_lightning.export import export_encoder, export_transformers, main
from mae_lightning.models import MaskedAutoencoder, VisionTransformer
from mae_lightning.models.presets import encoder_size
from mae_lightning.models.transformers_io import from_transformers, to_transformers
from mae_lightning.models.weights import load_weights
from tests.helpers import cli_checkpoint

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
# ViT-T (width 192, 12 blocks of 3 heads) on 32x32 images in 4x4 patches, with its 128-wide decoder of 4 heads.
VIT_T = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128,
             decoder_depth=4, decoder_num_heads=4)  # fmt: skip
# Non-square 16x24 images with 4 channels: a 4x6 patch grid.
WIDE_4CH = dict(img_size=(16, 24), patch_size=4, in_chans=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)  # fmt: skip


def _mae(args: dict, norm_pix_loss: bool = False, seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    model = MaskedAutoencoder(**args, norm_pix_loss=norm_pix_loss).eval()
    with torch.no_grad():  # biases and norms away from their 0 / 1 initialisation, so that a swap would show
        for name, tensor in model.named_parameters():
            if name.endswith(("bias", "norm1.weight", "norm2.weight", "norm.weight")):
                tensor.add_(0.1 * torch.randn_like(tensor))
    return model


def _images(args: dict, n: int = 3) -> torch.Tensor:
    size = args["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(n, args["in_chans"], height, width, generator=torch.Generator().manual_seed(1))


def _loaded(cls, folder: Path, **kwargs):
    """``cls.from_pretrained(folder)``, asserting that every key matched (no warning about keys)."""
    model, info = cls.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_vit_t_pretraining_checkpoint_loads_as_vitmae_with_the_same_loss_predictions_and_mask(tmp_path):
    ours = _mae(VIT_T, norm_pix_loss=True)
    ckpt = cli_checkpoint(tmp_path / "run.ckpt", ours, {**VIT_T, "norm_pix_loss": True}, mask_ratio=0.6)

    config = export_transformers(ckpt, tmp_path / "hf")

    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved == json.loads(json.dumps(config))
    assert saved["architectures"] == ["ViTMAEForPreTraining"] and saved["mask_ratio"] == 0.6
    assert saved["norm_pix_loss"] is True and saved["image_size"] == 32 and saved["num_channels"] == 3
    assert (saved["hidden_size"], saved["num_hidden_layers"], saved["num_attention_heads"]) == (192, 12, 3)
    assert (saved["decoder_hidden_size"], saved["decoder_num_hidden_layers"]) == (128, 4)
    theirs = _loaded(transformers.ViTMAEForPreTraining, tmp_path / "hf")
    imgs, noise = _images(VIT_T), torch.rand(3, ours.num_patches)
    with torch.no_grad():
        loss, pred, mask = ours(imgs, mask_ratio=0.6, noise=noise)
        out = theirs(pixel_values=imgs, noise=noise)
    torch.testing.assert_close(out.mask, mask, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, pred, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=ATOL)


def test_the_written_file_has_the_layout_of_the_facebook_vit_mae_repositories(tmp_path):
    ours = _mae(WIDE_4CH)
    tensors = to_transformers(ours.state_dict(), "ViTMAEForPreTraining")
    layer = ["attention.attention.query", "attention.attention.key", "attention.attention.value"]
    layer += ["attention.output.dense", "intermediate.dense", "output.dense", "layernorm_before", "layernorm_after"]
    expected = {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "decoder.mask_token"}
    expected |= {"decoder.decoder_pos_embed"}
    for module in ["vit.embeddings.patch_embeddings.projection", "vit.layernorm", "decoder.decoder_embed"]:
        expected |= {f"{module}.weight", f"{module}.bias"}
    for module in ["decoder.decoder_norm", "decoder.decoder_pred"]:
        expected |= {f"{module}.weight", f"{module}.bias"}
    for stack, depth in (("vit.encoder.layer", 2), ("decoder.decoder_layers", 1)):
        expected |= {f"{stack}.{i}.{name}.{p}" for i in range(depth) for name in layer for p in ("weight", "bias")}
    assert set(tensors) == expected
    # q, k and v are the thirds of the fused projection, in that order.
    qkv = ours.state_dict()["blocks.1.attn.qkv.weight"]
    assert torch.equal(tensors["vit.encoder.layer.1.attention.attention.key.weight"], qkv[32:64])
    assert from_transformers(tensors).keys() == ours.state_dict().keys()


def test_non_square_four_channel_model_round_trips_through_a_transformers_folder(tmp_path):
    ours = _mae(WIDE_4CH, norm_pix_loss=True)
    export_transformers(cli_checkpoint(tmp_path / "run.ckpt", ours, WIDE_4CH), tmp_path / "hf")

    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["image_size"] == [16, 24] and saved["num_channels"] == 4
    checkpoint = read_checkpoint(tmp_path / "hf")
    assert checkpoint.model_args == {**WIDE_4CH, "mlp_ratio": 4.0, "norm_pix_loss": False}
    back = MaskedAutoencoder(**{**checkpoint.model_args, "norm_pix_loss": True}).eval()
    report = load_weights(back, tmp_path / "hf", strict=True)
    assert not report.missing and not report.unexpected
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    # transformers 5 cannot build a ViTMAE for a non-square grid: its sin-cos initialisation takes the square
    # root of the patch count. Should it learn to, the folder must give the same outputs.
    try:
        theirs = _loaded(transformers.ViTMAEForPreTraining, tmp_path / "hf")
    except RuntimeError as err:
        assert "must match the size" in str(err)
        return
    imgs, noise = _images(WIDE_4CH), torch.rand(3, ours.num_patches)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=imgs, noise=noise).logits, ours(imgs, 0.75, noise)[1])


@pytest.mark.parametrize("args", [VIT_T, WIDE_4CH], ids=["vit_t", "16x24_4ch"])
def test_an_encoder_loads_as_vitmodel_with_the_same_features(args, tmp_path):
    ours = _mae(args)
    encoder = {key: value for key, value in ours.state_dict().items() if key.startswith(ENCODER_KEYS)}
    path = tmp_path / "encoder.pth"
    torch.save({"model": encoder}, path)  # an official encoder-only file: its heads come from the ViT sizes
    if args is WIDE_4CH:  # the encoder of a pretraining checkpoint, whose heads its hyperparameters record
        path = cli_checkpoint(tmp_path / "run.ckpt", ours, args)

    config = export_transformers(path, tmp_path / "hf", encoder_only=True)

    assert config["architectures"] == ["ViTModel"]
    theirs = _loaded(transformers.ViTModel, tmp_path / "hf", add_pooling_layer=False)
    imgs = _images(args)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=imgs).last_hidden_state, ours.forward_features(imgs),
                                   rtol=0, atol=ATOL)  # fmt: skip
    assert encoder_size(read_checkpoint(tmp_path / "hf"))["num_heads"] == args["num_heads"]


def test_vitmae_from_transformers_loads_into_masked_autoencoder_with_nothing_missing(tmp_path):
    config = transformers.ViTMAEConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
        intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=4, decoder_num_attention_heads=4,
        decoder_intermediate_size=512, layer_norm_eps=1e-6, mask_ratio=0.75, norm_pix_loss=True,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.ViTMAEForPreTraining(config).eval()
    theirs.save_pretrained(tmp_path / "hf")  # transformers' own layout on disk

    checkpoint = read_checkpoint(tmp_path / "hf")
    ours = MaskedAutoencoder(**checkpoint.model_args).eval()
    report = load_weights(ours, tmp_path / "hf" / "model.safetensors", strict=True)

    assert not report.missing and not report.unexpected
    assert checkpoint.model_args == {**VIT_T, "mlp_ratio": 4.0, "norm_pix_loss": True}
    assert from_transformers(theirs.state_dict()).keys() == ours.state_dict().keys()  # its in-memory names too
    # The model card's way to timm: the Hub folder's encoder exported as a timm state dict.
    export_encoder(tmp_path / "hf" / "model.safetensors", tmp_path / "timm.safetensors")
    timm_file = load_file(tmp_path / "timm.safetensors")
    for key, tensor in part(ours.state_dict(), ENCODER_KEYS).items():
        assert torch.equal(timm_file.pop(key), tensor), key
    assert not timm_file
    imgs, noise = _images(VIT_T), torch.rand(3, ours.num_patches)
    with torch.no_grad():
        loss, pred, mask = ours(imgs, mask_ratio=0.75, noise=noise)
        out = theirs(pixel_values=imgs, noise=noise)
    torch.testing.assert_close(out.mask, mask, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, pred, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=ATOL)


def test_a_cls_token_classifier_loads_as_vit_for_image_classification_with_its_labels(tmp_path):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2, num_heads=2)
    ours = VisionTransformer(**args, global_pool=False).eval()
    nn.init.normal_(ours.head.weight)
    ckpt = cli_checkpoint(tmp_path / "ft.ckpt", ours, {**args, "global_pool": False})

    main([str(ckpt), str(tmp_path / "hf"), "--include_head", "true", "--labels", "[cat, dog, bird]"])

    theirs = _loaded(transformers.ViTForImageClassification, tmp_path / "hf")
    assert theirs.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    imgs = _images(args)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=imgs).logits, ours(imgs), rtol=0, atol=ATOL)
    # And back: transformers' classifier into this project's.
    checkpoint = read_checkpoint(tmp_path / "hf")
    back = VisionTransformer(**checkpoint.model_args).eval()
    load_weights(back, tmp_path / "hf", strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(imgs), ours(imgs), rtol=0, atol=0)


def test_a_linear_probe_head_is_folded_into_one_linear_layer(tmp_path):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=1, num_heads=2)
    ours = VisionTransformer(**args, global_pool=False)
    ours.head = nn.Sequential(nn.BatchNorm1d(32, affine=False, eps=1e-6), ours.head)  # as LinearProbe
    ours.head[0].running_mean.normal_()
    ours.head[0].running_var.uniform_(0.5, 2.0)
    nn.init.normal_(ours.head[1].weight)
    ours.eval()

    export_transformers(cli_checkpoint(tmp_path / "probe.ckpt", ours, args), tmp_path / "hf", include_head=True)

    theirs = _loaded(transformers.ViTForImageClassification, tmp_path / "hf")
    imgs = _images(args)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=imgs).logits, ours(imgs), rtol=0, atol=ATOL)


def test_a_global_pool_classifier_is_refused_in_one_line(tmp_path, capsys):
    args = dict(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=1, num_heads=2)
    ckpt = cli_checkpoint(tmp_path / "ft.ckpt", VisionTransformer(**args), args)
    with pytest.raises(SystemExit) as stop:
        main([str(ckpt), str(tmp_path / "hf"), "--include_head", "true"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fc_norm" in err[0] and "export it to timm" in err[0]
    assert not (tmp_path / "hf").exists()


def test_the_model_card_states_the_run_and_what_is_absent(tmp_path):
    ours = _mae(WIDE_4CH)
    run = tmp_path / "runs" / "wide"
    ckpt = cli_checkpoint(run / "checkpoints" / "last.ckpt", ours, WIDE_4CH, mask_ratio=0.75)
    (run / "version_0").mkdir(parents=True)
    (run / "version_0" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,val/knn_top1\n0,9,0.9,,\n0,9,,0.5,\n"
    )
    (run / "config.yaml").write_text("data:\n  class_path: mae_lightning.DigitsDataModule\n  init_args:\n"
                                     "    img_size: [16, 24]\n")  # fmt: skip

    export_transformers(ckpt, tmp_path / "hf", repo_id="me/wide-mae")
    card = (tmp_path / "hf" / "README.md").read_text()

    assert "# license:" in card and "\nlicense:" not in card  # left for the publisher to set
    assert "mask ratio 0.75" in card and "mae_lightning.DigitsDataModule" in card
    assert "val/loss: 0.5" in card and "train/loss" not in card
    assert "val/knn_top1" not in card  # never logged: not invented
    assert "--model.init_args.init_weights hf:me/wide-mae" in card
    assert 'ViTMAEForPreTraining.from_pretrained("me/wide-mae")' in card
    assert "mae_lightning.export <downloaded folder>/model.safetensors" in card

    bare = tmp_path / "bare.pth"
    torch.save({"model": ours.state_dict()}, bare)
    with pytest.raises(WeightsMismatchError, match="heads"):
        export_transformers(bare, tmp_path / "bare")  # an unnamed size: the heads are not recorded anywhere
    cli_checkpoint(tmp_path / "alone.ckpt", ours, WIDE_4CH)  # no run folder around it
    export_transformers(tmp_path / "alone.ckpt", tmp_path / "alone")
    card = (tmp_path / "alone" / "README.md").read_text()
    assert "None found" in card and "not recorded (no config.yaml" in card
