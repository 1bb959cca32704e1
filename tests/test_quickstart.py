"""The README's main job: the quickstart pretraining run to the end, as a user runs it."""

import csv
from pathlib import Path

import pytest

from mae_lightning.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_runs_to_the_end_and_the_loss_falls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(CONFIG), "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.current_epoch == cli.trainer.max_epochs

    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = [float(r["train/loss_step"]) for r in rows if r["train/loss_step"]]
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    # The promise in the README: the last logged train/loss is at most 70% of the first.
    assert train[-1] <= 0.7 * train[0], (train[0], train[-1])
    assert val[-1] <= 0.7 * val[0], (val[0], val[-1])
    assert (tmp_path / "runs" / "quickstart").is_dir()
