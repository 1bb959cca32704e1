"""Weights in: official-format files (built here from random models with the official key names) load exactly."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from mae_lightning import MaskedAutoencoder
from mae_lightning.checkpoint import ENCODER_KEYS, WeightsMismatchError, part, read_state_dict
from mae_lightning.models.pos_embed import resize_pos_embed, sincos_2d, sincos_grid
from mae_lightning.models.weights import load_weights
from tests.helpers import tiny_mae
from tests.reference import official_interpolate_pos_embed


def small_mae(img_size=32, seed=0, **kwargs) -> MaskedAutoencoder:
    return tiny_mae(seed=seed, img_size=img_size, **{"patch_size": 8, "in_chans": 3, "depth": 2, **kwargs}).eval()


def encoder_keys(state_dict: dict) -> dict:
    return part(state_dict, ENCODER_KEYS)


def official_full(model: MaskedAutoencoder) -> dict:
    """``mae_visualize_vit_*.pth`` / ``*_full.pth``: the whole MaskedAutoencoderViT under "model"."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}}


def official_encoder(model: MaskedAutoencoder) -> dict:
    """``mae_pretrain_vit_*.pth``: the encoder keys only (fixed sin-cos pos_embed, final norm)."""
    return {"model": encoder_keys({k: v.clone() for k, v in model.state_dict().items()})}


def official_finetuned(model: MaskedAutoencoder, num_classes: int = 10) -> dict:
    """``mae_finetuned_vit_*.pth``: models_vit.VisionTransformer(global_pool=True), i.e. a learned pos_embed,
    ``fc_norm`` instead of ``norm`` and a classification ``head``."""
    state = encoder_keys({k: v.clone() for k, v in model.state_dict().items()})
    dim = state["cls_token"].shape[-1]
    del state["norm.weight"], state["norm.bias"]
    state["pos_embed"] = state["pos_embed"] + 0.02 * torch.randn_like(state["pos_embed"])  # trained: no sin-cos
    state["fc_norm.weight"], state["fc_norm.bias"] = torch.rand(dim) + 0.5, 0.1 * torch.randn(dim)
    state["head.weight"], state["head.bias"] = 0.01 * torch.randn(num_classes, dim), torch.zeros(num_classes)
    return {"model": state}


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@torch.no_grad()
def outputs(model: MaskedAutoencoder, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    imgs = torch.randn(2, model.in_chans, *model.img_size, generator=generator)
    noise = torch.rand(2, model.num_patches, generator=generator)
    loss, pred, mask = model(imgs, 0.75, noise)
    return loss, pred, mask, model.forward_features(imgs)


# --------------------------------------------------------------------------- official formats


def test_full_checkpoint_loads_with_identical_outputs(tmp_path):
    source = small_mae(seed=0)
    path = save(official_full(source), tmp_path / "mae_visualize_vit_small.pth")
    target = small_mae(seed=1)
    assert not torch.equal(outputs(target)[1], outputs(source)[1])

    report = load_weights(target, path, strict=True)

    assert report.missing == [] and report.unexpected == [] and report.resized == {}
    assert len(report.loaded) == len(source.state_dict())
    for got, want in zip(outputs(target), outputs(source), strict=True):
        assert torch.equal(got, want)


def test_encoder_file_loads_the_encoder_and_leaves_the_decoder(tmp_path):
    source = small_mae(seed=0)
    path = save(official_encoder(source), tmp_path / "mae_pretrain_vit_small.pth")
    target = small_mae(seed=1)
    decoder_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(("decoder", "mask_token"))}

    report = load_weights(target, path, expected_missing=["decoder*", "mask_token"], strict=True)

    assert sorted(report.missing) == sorted(decoder_before)
    assert report.unexpected == [] and report.clean
    assert "missing in the file (left as initialised): mask_token, decoder_pos_embed, decoder_embed.weight" in (
        report.message()
    )
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.forward_features(imgs), source.forward_features(imgs))
    for key, value in decoder_before.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_encoder_file_with_strict_and_no_expectation_names_the_missing_keys(tmp_path):
    path = save(official_encoder(small_mae(seed=0)), tmp_path / "enc.pth")
    target = small_mae(seed=1)
    with pytest.raises(WeightsMismatchError, match=r"missing in the file .*decoder_blocks\.\* \(\d+ tensors\)"):
        load_weights(target, path, strict=True)


def test_finetuned_file_reports_head_and_fc_norm_in_one_message(tmp_path):
    source = small_mae(seed=0)
    checkpoint = official_finetuned(source)
    path = save(checkpoint, tmp_path / "mae_finetuned_vit_small.pth")
    target = small_mae(seed=1)

    report = load_weights(target, path, expected_missing=["decoder*", "mask_token"])

    assert sorted(report.unexpected) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.surprising_missing == ["norm.weight", "norm.bias"]
    assert not report.clean
    message = report.message()
    assert "unexpected in the file (ignored): fc_norm.weight, fc_norm.bias, head.weight, head.bias" in message
    assert "norm.weight, norm.bias" in message
    # The learned table has the model's shape: taken as it is, not replaced by sin-cos.
    assert torch.equal(target.pos_embed, checkpoint["model"]["pos_embed"])
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


# --------------------------------------------------------------------------- another resolution


def test_sincos_tables_are_recomputed_for_another_grid(tmp_path):
    path = save(official_full(small_mae(img_size=32, seed=0)), tmp_path / "full.pth")
    target = small_mae(img_size=(48, 64), seed=1)  # 4x4 patches -> 6x8

    report = load_weights(target, path, strict=True)

    assert set(report.resized) == {"pos_embed", "decoder_pos_embed"}
    assert "recomputed for the 6x8 grid (was 4x4)" in report.resized["pos_embed"]
    assert torch.equal(target.pos_embed[0], sincos_2d(32, (6, 8), cls_token=True))
    assert torch.equal(target.decoder_pos_embed[0], sincos_2d(16, (6, 8), cls_token=True))
    assert torch.isfinite(outputs(target)[0])


def test_learned_table_is_interpolated_like_the_official_code(tmp_path):
    checkpoint = official_finetuned(small_mae(img_size=32, seed=0))  # 4x4 grid, learned pos_embed
    path = save(checkpoint, tmp_path / "ft.pth")
    target = small_mae(img_size=56, seed=1)  # 7x7 grid

    report = load_weights(target, path)

    expected = official_interpolate_pos_embed(checkpoint["model"]["pos_embed"], num_patches=49, num_extra_tokens=1)
    assert target.pos_embed.shape == (1, 50, 32)
    assert torch.equal(target.pos_embed, expected)
    assert report.resized["pos_embed"] == "learned table resized bicubically from the 4x4 grid to 7x7"


def test_non_square_learned_table_needs_its_grid():
    table = torch.randn(1, 1 + 2 * 3, 32)
    state = {"pos_embed": table}
    with pytest.raises(WeightsMismatchError, match=r"pos_embed: .* 6 patch positions.*pos_embed_grid"):
        load_weights(small_mae(img_size=32), state)
    target = small_mae(img_size=32)
    load_weights(target, state, pos_embed_grid=(2, 3))
    assert torch.equal(target.pos_embed, resize_pos_embed(table, (2, 3), (4, 4)))


def test_sincos_grid_recognises_fixed_tables_only():
    assert sincos_grid(sincos_2d(32, (3, 5))) == (3, 5)
    assert sincos_grid(sincos_2d(32, (4, 4)) + 1e-3) is None


# --------------------------------------------------------------------------- failures


def test_shape_mismatch_names_every_key_and_changes_nothing(tmp_path):
    path = save(official_full(small_mae(seed=0)), tmp_path / "full.pth")
    target = small_mae(seed=1, embed_dim=64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as error:
        load_weights(target, path)
    message = str(error.value)
    assert "patch_embed.proj.weight: file (32, 3, 8, 8) vs model (64, 3, 8, 8)" in message
    assert "blocks.0.attn.qkv.weight: file (96, 32) vs model (192, 64)" in message
    assert "decoder_embed.weight: file (16, 32) vs model (16, 64)" in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_other_channel_count_is_a_shape_mismatch(tmp_path):
    path = save(official_full(small_mae(seed=0)), tmp_path / "full.pth")
    with pytest.raises(WeightsMismatchError, match=r"patch_embed\.proj\.weight: file \(32, 3, 8, 8\) vs model"):
        load_weights(small_mae(in_chans=1), path)


def test_unrelated_file_is_refused():
    with pytest.raises(WeightsMismatchError, match="shares no key"):
        load_weights(small_mae(), {"fc.weight": torch.zeros(2, 2)})


class _RunsCode:
    """Unpickling this object would run a function: torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _RunsCode()
    payload.marker = str(marker)
    path = save({"model": small_mae().state_dict(), "extra": payload}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        read_state_dict(path)
    assert not marker.exists()


def test_official_training_checkpoint_with_args_loads(tmp_path):
    # util/misc.save_model stores the argparse.Namespace, the optimizer and the epoch next to the model.
    model = small_mae(seed=0)
    checkpoint = {"model": model.state_dict(), "epoch": 799, "args": argparse.Namespace(lr=None, blr=1.5e-4)}
    state = read_state_dict(save(checkpoint, tmp_path / "checkpoint-799.pth"))
    assert state.keys() == model.state_dict().keys()


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_state_dict(tmp_path / "nope.pth")


def test_wrapper_prefixes_are_stripped():
    model = small_mae()
    ddp_style = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert read_state_dict(ddp_style).keys() == model.state_dict().keys()
    lightning_style = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    assert read_state_dict(lightning_style, prefix="model.").keys() == model.state_dict().keys()
    with pytest.raises(WeightsMismatchError, match="no key starts with prefix 'encoder.'"):
        read_state_dict(lightning_style, prefix="encoder.")
