"""A NaN rolls back: the last good state is restored, the batches since are skipped, the run trains on
(``runtime/rollback.py``). A NaN is injected into a chosen step's batch (``cli_plugins.InjectNaN``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mae_lightning.cli import main
from mae_lightning.runtime import RollbackOnNonFiniteLoss, StopOnNonFiniteLoss
from tests.helpers import DDP, DIGITS_16, FAST_16PX, QUICKSTART, TESTS, read_losses, run_cli, tiny_model_args, tiny_run

NAN_AT, STEPS = 3, 8


@pytest.fixture(autouse=True)
def _cli_plugins_importable(run_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # cli_plugins


def plugin(name: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": name, "init_args": init_args})


def fit(losses: str, *rollback: str):
    return main(["fit", "--config", QUICKSTART, *FAST_16PX, *tiny_model_args(), "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", str(STEPS), "--trainer.limit_val_batches", "1",
                 "--trainer.logger", "false", plugin("cli_plugins.InjectNaN", step=NAN_AT),
                 plugin("cli_plugins.PerRankLosses", dirpath=losses), *rollback])  # fmt: skip


ROLLBACK = plugin(
    "mae_lightning.RollbackOnNonFiniteLoss", check_every_n_steps=1, lr_scale=0.5, decoder_fp32=True, max_rollbacks=2
)


def test_a_nan_rolls_back_to_the_last_good_state_and_the_run_finishes_the_same_every_time():
    cli = fit("losses_a", ROLLBACK)
    assert cli.trainer.state.finished and cli.trainer.global_step == STEPS
    # The default stop gave way to the configured policy: one non-finite-loss callback.
    policies = [c for c in cli.trainer.callbacks if isinstance(c, StopOnNonFiniteLoss)]
    assert len(policies) == 1 and isinstance(policies[0], RollbackOnNonFiniteLoss) and policies[0].rollbacks == 1
    assert cli.trainer.callback_metrics["train/rollbacks"] == 1
    # From the rollback on: the lr schedule halved, the decoder in fp32, every weight finite.
    assert cli.model.lr_scale == 0.5 and cli.model.model.decoder_fp32
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    losses = read_losses(Path("losses_a/rank0.txt"))
    assert math.isnan(float.fromhex(losses[NAN_AT + 1])) and len(losses) == STEPS
    assert all(math.isfinite(float.fromhex(loss)) for step, loss in losses.items() if step != NAN_AT + 1)
    # The same seed and the same fault: the same run, bit for bit.
    fit("losses_b", ROLLBACK)
    assert Path("losses_a/rank0.txt").read_text() == Path("losses_b/rank0.txt").read_text()


def test_past_max_rollbacks_the_run_stops_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit("losses", plugin("mae_lightning.RollbackOnNonFiniteLoss", check_every_n_steps=1, max_rollbacks=0))
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"not finite (NaN or inf) at step {NAN_AT}" in line, line


def test_the_default_policy_still_stops():
    with pytest.raises(SystemExit) as exit_info:
        fit("losses", "--trainer.log_every_n_steps", "1")
    assert exit_info.value.code == 1


@pytest.mark.slow
def test_two_processes_roll_back_together_and_finish(tmp_path: Path):
    """A NaN on every rank at the same step: both restore the same step's state and train on in step."""
    trainer = f"""{DDP}
  max_epochs: 1
  limit_train_batches: {STEPS}
  limit_val_batches: 0
  logger: false
  callbacks:
    - class_path: cli_plugins.InjectNaN
      init_args: {{step: {NAN_AT}}}
    - class_path: cli_plugins.PerRankLosses
      init_args: {{dirpath: losses}}
    - class_path: mae_lightning.RollbackOnNonFiniteLoss
      init_args: {{check_every_n_steps: 1}}"""
    (tmp_path / "run.yaml").write_text(tiny_run(DIGITS_16, trainer))
    run_cli(tmp_path, "fit", "--config", "run.yaml")
    ranks = [read_losses(tmp_path / "losses" / f"rank{rank}.txt") for rank in (0, 1)]
    for losses in ranks:
        assert len(losses) == STEPS and math.isnan(float.fromhex(losses[NAN_AT + 1]))
        assert all(math.isfinite(float.fromhex(loss)) for step, loss in losses.items() if step != NAN_AT + 1)
    # DDP keeps the ranks' weights equal: after the rollback their losses stay those of one model on two shares.
    assert ranks[0].keys() == ranks[1].keys()
