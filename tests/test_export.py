"""Weights out: an exported encoder loads into timm's VisionTransformer with strict=True and gives our features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from mae_lightning import DigitsDataModule, MAEPretraining
from mae_lightning.export import export_encoder, main
from mae_lightning.models import mae_vit_tiny_patch16
from tests.helpers import tiny_mae

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def load_exported(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


def test_export_command_loads_into_timm_vit_tiny_patch16_224(tmp_path, capsys):
    torch.manual_seed(0)
    # The paper's ViT-Tiny/16 encoder at 224 px; a one-block decoder keeps the file small (it is not exported).
    ours = mae_vit_tiny_patch16(decoder_depth=1).eval()
    torch.save({"model": ours.state_dict()}, tmp_path / "mae_full.pth")  # official *_full.pth layout
    out = tmp_path / "vit_tiny.safetensors"

    # The entry point of `python -m mae_lightning.export`, in-process.
    main([str(tmp_path / "mae_full.pth"), str(out)])
    assert 'timm.create_model("vit_tiny_patch16_224"' in capsys.readouterr().out

    state = load_exported(out)
    assert not any(key.startswith(("decoder", "mask_token")) for key in state)
    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected_tokens = ours.forward_features(imgs)
        # Cls-token features, and the mean of the normalised patch tokens (no timm fc_norm after pooling).
        pools = (("cls", {"global_pool": "token"}), ("mean", {"global_pool": "avg", "fc_norm": False}))
        for pool, timm_kwargs in pools:
            theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **timm_kwargs).eval()
            theirs.load_state_dict(state, strict=True)
            torch.testing.assert_close(theirs.forward_features(imgs), expected_tokens, rtol=0, atol=1e-5)
            torch.testing.assert_close(theirs(imgs), ours.embed(imgs, pool=pool), rtol=0, atol=1e-5)


def test_trained_checkpoint_exports_for_a_custom_timm_vit(tmp_path):
    # A project checkpoint after real training steps: grayscale, non-square images.
    torch.manual_seed(0)
    net = tiny_mae(img_size=(16, 24), depth=2)
    module = MAEPretraining(net, lr=1e-2, warmup_epochs=0)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DigitsDataModule(img_size=(16, 24), batch_size=8, num_workers=0))
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    info = export_encoder(tmp_path / "run.ckpt", tmp_path / "encoder.pth")

    assert info["img_size"] == [16, 24] and info["in_chans"] == 1 and info["depth"] == 2
    theirs = VisionTransformer(**{**info, "num_heads": 2}, num_classes=0, global_pool="token").eval()
    theirs.load_state_dict(load_exported(tmp_path / "encoder.pth"), strict=True)
    imgs = torch.randn(3, 1, 16, 24)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.forward_features(imgs), net.forward_features(imgs), rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(imgs), net.embed(imgs, pool="cls"), rtol=0, atol=1e-5)


def test_export_without_an_encoder_says_what_is_missing(tmp_path, capsys):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "other.pth"), str(tmp_path / "x.pth")])
    assert exit_info.value.code == 2
    assert "no ViT encoder found: patch_embed.proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
