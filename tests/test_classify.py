"""Linear probe and fine-tuning from a pretraining checkpoint: the real CLI and Trainer on tiny data, and predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from mae_lightning import DigitsDataModule, FineTune, LinearProbe
from mae_lightning.cli import main
from mae_lightning.models import load_pretrained_encoder, mae_vit_tiny_patch4_32
from mae_lightning.models.pos_embed import sincos_2d
from tests.helpers import CONFIGS, DEBUG, QUICKSTART, QUIET, tiny_mae_checkpoint, tiny_vit

pytestmark = pytest.mark.usefixtures("run_in_tmp")

PREDICT = str(CONFIGS / "presets" / "predict.yaml")


def test_pretrained_encoder_weights_are_loaded_by_name(tmp_path):
    ckpt = tiny_mae_checkpoint(tmp_path / "mae.ckpt")
    mae_state = torch.load(ckpt, weights_only=False)["state_dict"]
    for global_pool in (False, True):
        model = tiny_vit(global_pool=global_pool)
        load_pretrained_encoder(model, ckpt)
        own = model.state_dict()
        for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.weight"):
            torch.testing.assert_close(own[key], mae_state[f"model.{key}"])
        if not global_pool:
            torch.testing.assert_close(own["norm.weight"], mae_state["model.norm.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained_encoder(tiny_vit(embed_dim=16), ckpt)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained_encoder(tiny_vit(), tmp_path / "nowhere.ckpt")


def test_encoder_pretrained_at_another_image_size_gets_a_recomputed_position_table(tmp_path):
    ckpt = tiny_mae_checkpoint(tmp_path / "mae.ckpt")  # 16 px: a 4x4 grid
    mae_state = torch.load(ckpt, weights_only=False)["state_dict"]
    model = tiny_vit(img_size=(24, 32))  # a 6x8 grid
    changes = load_pretrained_encoder(model, ckpt)
    assert list(changes) == ["pos_embed"] and "6x8" in changes["pos_embed"] and "4x4" in changes["pos_embed"]
    pos_embed = model.state_dict()["pos_embed"]
    assert pos_embed.shape == (1, 1 + 6 * 8, 32)
    torch.testing.assert_close(pos_embed[0, 0], mae_state["model.pos_embed"][0, 0])  # the cls row is kept
    torch.testing.assert_close(pos_embed[0, 1:], sincos_2d(32, (6, 8)), rtol=0, atol=0)
    qkv = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(model.state_dict()[qkv], mae_state[f"model.{qkv}"])
    assert load_pretrained_encoder(tiny_vit(), ckpt) == {}  # same size: nothing to adapt
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        load_pretrained_encoder(tiny_vit(patch_size=2), ckpt)  # another patch size cannot be adapted


def test_linear_probe_trains_only_the_head_and_keeps_the_encoder(tmp_path):
    ckpt = tiny_mae_checkpoint(tmp_path / "mae.ckpt")
    module = LinearProbe(tiny_vit(global_pool=False), pretrained=str(ckpt), warmup_epochs=0)
    head = module.model.head
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"model.head.1.weight", "model.head.1.bias"}
    head_before = head[1].weight.detach().clone()
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, DigitsDataModule(img_size=16, batch_size=16, num_workers=0, crop_scale=(0.08, 1.0)))
    # The encoder is the checkpoint's, loaded when fitting started and never moved by training.
    mae_state = torch.load(ckpt, weights_only=False)["state_dict"]
    encoder = {k: v for k, v in module.model.state_dict().items() if not k.startswith("head.")}
    for key, value in encoder.items():
        torch.testing.assert_close(value, mae_state[f"model.{key}"])
    assert not torch.equal(head[1].weight, head_before)
    assert isinstance(trainer.optimizers[0], type(module.configure_optimizers()))
    assert 0.0 <= float(trainer.callback_metrics["val/top1"]) <= float(trainer.callback_metrics["val/top5"]) <= 1.0


def test_partial_fine_tuning_freezes_all_but_the_last_blocks():
    module = FineTune(tiny_vit(depth=3), trainable_blocks=1)
    trainable = {n.removeprefix("model.") for n, p in module.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"blocks", "fc_norm", "head"}
    assert all(n.startswith("blocks.2.") for n in trainable if n.startswith("blocks"))
    groups = module.configure_optimizers().param_groups
    assert sorted({"_".join(g["name"].split("_")[:2]) for g in groups}) == ["layer_3", "layer_4"]
    with pytest.raises(ValueError, match="trainable_blocks"):
        FineTune(tiny_vit(depth=3), trainable_blocks=4)


def test_fine_tune_lr_follows_layer_decay_and_mixup_targets_are_smoothed(tmp_path):
    module = FineTune(tiny_vit(depth=2), lr=1e-3, warmup_epochs=0, layer_decay=0.5, label_smoothing=0.1)
    trainer = Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, DigitsDataModule(img_size=16, batch_size=16, num_workers=0, augmentation="finetune"))
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    top = lrs["layer_3_decay"]
    assert lrs["layer_2_decay"] == pytest.approx(top * 0.5)
    assert lrs["layer_0_decay"] == pytest.approx(top * 0.125)
    soft = module.soft_targets(torch.tensor([[0.7, 0.3] + [0.0] * 8]))
    torch.testing.assert_close(soft, torch.tensor([[0.7 * 0.9 + 0.01, 0.3 * 0.9 + 0.01] + [0.01] * 8]))


def _cifar_checkpoint(tmp_path: Path) -> str:
    """A pretraining-style checkpoint of the configs' ViT-Tiny (4x4 patches) at its initialisation."""
    mae = mae_vit_tiny_patch4_32()
    path = tmp_path / "vit_tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in mae.state_dict().items()}}, path)
    return str(path)


@pytest.mark.parametrize("name", ["linprobe/cifar10_vit_tiny.yaml", "finetune/cifar10_vit_tiny.yaml"])
def test_cifar10_evaluation_config_fits_on_real_images(name, cifar10_subset, tmp_path):
    args = [
        "fit", "--config", str(CONFIGS / name), "--config", DEBUG, *QUIET,
        "--model.init_args.pretrained", _cifar_checkpoint(tmp_path),
        "--data", "mae_lightning.ImageFolderDataModule", "--data.init_args.root", str(cifar10_subset),
        "--data.init_args.val_dir", "test", "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0",
        "--trainer.fast_dev_run", "true",
    ]  # fmt: skip
    cli = main(args)
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    assert "val/top1" in cli.trainer.callback_metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    # An ImageNet run is its recipe, then its size file (configs/imagenet/).
    [
        f"imagenet/{kind}.yaml imagenet/{kind}_vit_{size}.yaml"
        for kind in ("linprobe", "finetune")
        for size in ("base", "large", "huge")
    ]
    + ["finetune/cifar10_vit_tiny_patch2.yaml"],
)
def test_big_evaluation_config_fits_on_tiny_images(name):
    patch = 14 if "huge" in name else 2 if "patch2" in name else 16
    # Without `pretrained` the encoder size must be stated: the CIFAR configs take it from their checkpoint. The
    # head is sized for the digits' 10 classes (a 1000-way head on them stops when fitting starts).
    size = {"patch_size": 2, "embed_dim": 192, "depth": 12, "num_heads": 3} if "cifar10" in name else {}
    size["num_classes"] = 10
    args = [
        "fit", *[word for config in name.split() for word in ("--config", str(CONFIGS / config))],
        "--config", DEBUG, *QUIET, "--model.init_args.pretrained", "null",
        *[item for key, value in size.items() for item in (f"--model.init_args.model.init_args.{key}", str(value))],
        "--data", "mae_lightning.DigitsDataModule", "--data.init_args.img_size", str(2 * patch),
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "true",
    ]  # fmt: skip
    cli = main(args)
    assert cli.trainer.state.finished


def test_predict_writes_embeddings_and_reconstructions(tmp_path):
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    fit = main(["fit", "--config", QUICKSTART, *QUIET, "--data.init_args.img_size", "16", *limits])
    ckpt = tmp_path / "runs/quickstart/checkpoints/last.ckpt"
    assert (Path(fit.trainer.log_dir) / "reconstructions").is_dir() is False  # every_n_epochs 5: not yet drawn
    main(["predict", "--config", QUICKSTART, "--config", PREDICT, *QUIET, "--data.init_args.img_size", "16",
          "--ckpt_path", str(ckpt)])  # fmt: skip
    out = np.load(tmp_path / "runs/predict/embeddings.npz")
    assert out["cls"].shape == (297, 128) and out["mean"].shape == (297, 128)
    np.testing.assert_array_equal(out["index"], np.arange(297))
    from mae_lightning.data import Digits

    np.testing.assert_array_equal(out["target"], np.asarray(Digits("val").targets))
    assert (tmp_path / "runs/predict/reconstructions/predict.png").is_file()


def test_linear_probe_refuses_sharded_strategies():
    """LARS scales each update by whole-tensor norms, which a shard does not have: one line, at set-up."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    module = LinearProbe(tiny_vit(num_classes=3))
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="strategy: ddp"):
        module.configure_model()


def test_linear_probe_under_fsdp_stops_in_one_line(capsys):
    args = ["fit", "--config", str(CONFIGS / "linprobe" / "quickstart.yaml"), "--model.init_args.pretrained", "null",
            "--trainer.strategy", "fsdp"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "strategy: ddp" in capsys.readouterr().err.strip().splitlines()[-1]
