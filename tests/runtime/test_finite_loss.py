"""A non-finite loss stops the run, names the step, and leaves the last good checkpoint as it was."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from lightning.pytorch import Callback

from mae_lightning.cli import main
from tests.helpers import QUICKSTART

POISON_STEP = 5


class PoisonWeightsAt(Callback):
    """Fills a weight of the model with NaN before step ``step``: its loss and every later one are NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.patch_embed.proj.weight.fill_(math.nan)


@pytest.mark.parametrize("log_every", [1, 4], ids=["checked every step", "checked every 4 steps"])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(log_every, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "every_n_train_steps": 2},
        },
        {"class_path": f"{__name__}.PoisonWeightsAt", "init_args": {"step": POISON_STEP}},
    ]
    argv = [
        "fit",
        "--config",
        QUICKSTART,
        "--data.init_args.batch_size=16",
        "--data.init_args.img_size=16",
        "--model.init_args.model.init_args.depth=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        "--trainer.max_steps=12",
        f"--trainer.log_every_n_steps={log_every}",
        "--trainer.logger=false",
        f"--trainer.callbacks={json.dumps(callbacks)}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mae_lightning: error:") and f"not finite (NaN or inf) at step {POISON_STEP}" in last
    assert "gradient_clip_val" in last
    # Checkpoints at steps 2 and 4 were good; the one due at step 6 (after the NaN) must not replace them.
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
