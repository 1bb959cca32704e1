"""The README's first hour: the quickstart pretraining run to the end, then its probe and fine-tuning, offline."""

import csv
from pathlib import Path

import pytest

from mae_lightning.cli import main
from tests.helpers import CONFIGS

QUIET = ["--trainer.enable_progress_bar", "false"]


def metrics(cli) -> list[dict[str, str]]:
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_quickstart_then_probe_and_fine_tune_what_it_pretrained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUIET])
    assert cli.trainer.current_epoch == cli.trainer.max_epochs
    rows = metrics(cli)
    train = [float(r["train/loss_step"]) for r in rows if r["train/loss_step"]]
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    # The promise in the README: the last logged train/loss is at most 70% of the first.
    assert train[-1] <= 0.7 * train[0], (train[0], train[-1])
    assert val[-1] <= 0.7 * val[0], (val[0], val[-1])
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "last.ckpt").is_file()

    # The second step, by the checkpoint's path alone (the configs state no encoder size). Measured on
    # 2026-12-01: probe 0.72 and fine-tuning 0.75 top-1 on the 297 validation digits; chance is 0.10.
    for evaluation in ("linprobe", "finetune"):
        cli = main(["fit", "--config", str(CONFIGS / evaluation / "quickstart.yaml"), *QUIET])
        assert cli.model.model.embed_dim == 128 and len(cli.model.model.blocks) == 4
        top1 = [float(r["val/top1"]) for r in metrics(cli) if r.get("val/top1")]
        assert top1[-1] >= 0.5, (evaluation, top1)
