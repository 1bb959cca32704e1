"""Real images: a CIFAR-10 JPEG subset through the ImageFolder DataModule, and a short pretraining run on it."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import torch

from mae_lightning import ImageFolderDataModule
from mae_lightning.cli import main
from tests.helpers import CIFAR10_CLASSES, CIFAR10_TEST_PER_CLASS, CIFAR10_TRAIN_PER_CLASS, CONFIGS

CONFIG = CONFIGS / "quickstart.yaml"


def test_cifar10_jpeg_folders_give_labelled_rgb_batches(cifar10_subset):
    """train/<class>/*.jpg and test/<class>/*.jpg (val_dir="test") give 3x32x32 batches labelled with 10 classes."""
    dm = ImageFolderDataModule(
        cifar10_subset, val_dir="test", img_size=32, batch_size=100, num_workers=0, pin_memory=False
    )
    dm.setup("fit")
    assert dm.train_set.classes == list(CIFAR10_CLASSES)
    assert len(dm.train_set) == 10 * CIFAR10_TRAIN_PER_CLASS
    assert len(dm.train_dataloader()) == len(dm.train_set) // 100

    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.float32
    assert len(set(targets.tolist())) > 5  # shuffled across classes, not class after class

    val = list(dm.val_dataloader())
    assert all(batch[0].shape[1:] == (3, 32, 32) for batch in val)
    counts = Counter(torch.cat([batch[1] for batch in val]).tolist())
    assert counts == {label: CIFAR10_TEST_PER_CLASS for label in range(10)}
    # Normalised with the ImageNet statistics: real photographs come out roughly centred.
    assert abs(torch.cat([batch[0] for batch in val]).mean().item()) < 0.5


def test_short_pretraining_run_on_real_images_lowers_the_loss(cifar10_subset, tmp_path, monkeypatch, one_torch_thread):
    """The quickstart model, pointed at the CIFAR-10 JPEG folders from the command line, learns in 20 steps."""
    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data",
            "mae_lightning.ImageFolderDataModule",
            "--data.root",
            str(cifar10_subset),
            "--data.val_dir",
            "test",
            "--data.in_chans",
            "3",
            "--data.num_workers",
            "0",
            "--data.pin_memory",
            "false",
            "--model.init_args.warmup_epochs",
            "0.2",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "20",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
        ]
    )
    assert isinstance(cli.datamodule, ImageFolderDataModule)
    assert cli.datamodule.in_chans == 3 and cli.model.model.in_chans == 3
    assert cli.trainer.global_step == 20

    metrics = Path(cli.trainer.logger.log_dir) / "metrics.csv"
    assert metrics.is_relative_to(tmp_path / "logs")
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    train = [float(r["train/loss_step"]) for r in rows if r["train/loss_step"]]
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert len(train) == 20
    last = sum(train[-3:]) / 3
    assert last < 0.75 * train[0], (train[0], train[-3:])
    assert len(val) == 1 and math.isfinite(val[0])
