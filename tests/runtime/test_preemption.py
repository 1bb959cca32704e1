"""Preemption: a real ``python -m mae_lightning fit`` process gets a real SIGTERM, saves, exits, and resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import QUICKSTART, tiny_model_args


def fit_args(root: Path, name: str, *extra: str) -> list[str]:
    checkpoint = (
        '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        f'{{"dirpath": "{root / "checkpoints"}", "save_last": true, "every_n_train_steps": 100000}}}}]'
    )
    return [
        sys.executable,
        "-m",
        "mae_lightning",
        "fit",
        "--config",
        QUICKSTART,
        *tiny_model_args(),
        "--data.init_args.batch_size=16",
        "--data.init_args.img_size=16",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={root / 'logs'}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        f"--trainer.callbacks={checkpoint}",
        *extra,
    ]


def logged_steps(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    with open(metrics, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_cleanly_and_the_next_start_loses_no_step(tmp_path: Path):
    metrics = tmp_path / "logs" / "first" / "version_0" / "metrics.csv"
    process = subprocess.Popen(
        fit_args(tmp_path, "first", "--trainer.max_epochs=1000"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(logged_steps(metrics)) < 3:  # training is under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert "resume with `--ckpt_path last`" in stderr.strip().splitlines()[-1]

    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    trained = logged_steps(metrics)
    # Every step that ran (and was logged) is in the checkpoint: none is lost.
    assert checkpoint["global_step"] == max(trained) + 1

    resumed = subprocess.run(
        fit_args(
            tmp_path,
            "resumed",
            "--trainer.max_epochs=1000",
            f"--trainer.max_steps={checkpoint['global_step'] + 2}",
            "--ckpt_path=last",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = logged_steps(tmp_path / "logs" / "resumed" / "version_0" / "metrics.csv")
    assert steps == [checkpoint["global_step"], checkpoint["global_step"] + 1]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert os.path.getsize(last) > 0
