"""Exact resume: a run stopped mid-epoch and resumed with ``--ckpt_path last`` is the uninterrupted run.

The real CLI, Trainer and checkpoints on disk, on CPU. Losses are compared bit for bit.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mae_lightning.cli import main
from tests.helpers import QUICKSTART, TESTS, tiny_model_args

STEPS_PER_EPOCH, EPOCHS, STOP_AT = 6, 2, 4  # stop inside the first epoch


@pytest.fixture(autouse=True)
def _cli_plugins_importable(run_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # cli_plugins


def run(root: Path, name: str, *extra: str, num_workers: int = 0, stop_at: int | None = None):
    """A short quickstart run whose checkpoints go to root/checkpoints and metrics to root/logs/<name>.

    ``stop_at`` ends the run after that step as an interruption would, leaving the lr schedule as configured.
    """
    checkpoint = (
        '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        f'{{"dirpath": "{root / "checkpoints"}", "save_last": true, "every_n_train_steps": 2, "save_top_k": -1}}}}'
    )
    if stop_at is not None:
        checkpoint += f', {{"class_path": "cli_plugins.StopAtStep", "init_args": {{"step": {stop_at}}}}}'
    checkpoint += "]"
    return main(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--data.init_args.num_workers",
            str(num_workers),
            "--data.init_args.persistent_workers",
            "false",
            "--data.init_args.batch_size",
            "16",
            "--data.init_args.img_size",
            "16",
            *tiny_model_args(depth=2),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.max_epochs",
            str(EPOCHS),
            "--trainer.limit_train_batches",
            str(STEPS_PER_EPOCH),
            "--trainer.limit_val_batches",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(root / "logs"),
            "--trainer.logger.init_args.name",
            name,
            "--trainer.callbacks",
            checkpoint,
            *extra,
        ]
    )


def step_losses(cli) -> dict[int, str]:
    """step -> train/loss_step as written in metrics.csv (the exact text, so equal means bit for bit)."""
    with open(Path(cli.trainer.log_dir) / "metrics.csv", newline="") as f:
        return {int(row["step"]): row["train/loss_step"] for row in csv.DictReader(f) if row["train/loss_step"]}


def assert_resume_is_exact(tmp_path: Path, num_workers: int) -> None:
    full = run(tmp_path / "full", "full", num_workers=num_workers)
    assert full.trainer.global_step == STEPS_PER_EPOCH * EPOCHS
    expected = step_losses(full)

    first = run(tmp_path / "split", "first", num_workers=num_workers, stop_at=STOP_AT)
    assert first.trainer.global_step == STOP_AT
    assert (tmp_path / "split" / "checkpoints" / "last.ckpt").is_file()
    resumed = run(tmp_path / "split", "resumed", "--ckpt_path", "last", num_workers=num_workers)
    assert resumed.trainer.global_step == STEPS_PER_EPOCH * EPOCHS
    got = {**step_losses(first), **step_losses(resumed)}

    assert sorted(got) == sorted(expected)
    assert len(expected) == STEPS_PER_EPOCH * EPOCHS
    assert got == expected
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_resume_mid_epoch_repeats_the_uninterrupted_losses_bit_for_bit(tmp_path: Path):
    assert_resume_is_exact(tmp_path, num_workers=0)


@pytest.mark.slow
def test_resume_mid_epoch_with_worker_processes_is_exact(tmp_path: Path):
    assert_resume_is_exact(tmp_path, num_workers=2)
