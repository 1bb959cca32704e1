"""Starting a W&B run from the command line: a key that exists, a name, the id of the run a checkpoint continues.

The command line (``cli.py``) calls the functions here on the parsed config's W&B loggers before anything is built;
:class:`KeepWandbRunId` stores the run id with every checkpoint, so a resumed run continues the same W&B run;
:class:`AnnounceWandbRun` prints where the run is once it has started.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from mae_lightning.checkpoint import read_checkpoint

STATE_KEY = "KeepWandbRunId"


class WandbNotReadyError(Exception):
    """An online W&B run was asked for without the API key it needs to start."""


class KeepWandbRunId(Callback):
    """Store the W&B run id with every checkpoint; the CLI passes it back to ``WandbLogger(id=..., resume="allow")``."""

    def __init__(self) -> None:
        self.run_id: str | None = None

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        run_id = self.run_id
        for logger in trainer.loggers if trainer is not None else []:
            if isinstance(logger, WandbLogger):
                run_id = logger.version
        return {"run_id": run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict.get("run_id")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer


class AnnounceWandbRun(Callback):
    """Print where the W&B run is once it has started (global rank zero, where the run lives)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning starts the loggers' experiments just before the callbacks' setup.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                rank_zero_info(wandb_run_location(logger.experiment))


def check_wandb_can_start(init_args) -> None:
    """Fail at once, with the fix, when an online W&B run has no API key to start with.

    Without a key wandb would stop at a login prompt (or fail deep inside the first step);
    offline mode (``trainer.logger.init_args.offline: true`` or ``WANDB_MODE=offline``) needs none.
    """
    offline = bool(init_args.get("offline")) or os.environ.get("WANDB_MODE") in ("offline", "disabled")
    if not offline and not _wandb_api_key_available():
        raise WandbNotReadyError(
            "the W&B logger is online but no W&B API key was found: run `wandb login`, "
            "set WANDB_API_KEY, or log offline with `--trainer.logger.init_args.offline true` "
            "(or WANDB_MODE=offline) and `wandb sync` later"
        )


def continue_wandb_run(loggers: list, checkpoint: Path) -> None:
    """Give each W&B logger without an ``id`` the run id stored in ``checkpoint``, to continue that run."""
    loggers = [logger for logger in loggers if not logger.init_args.get("id")]
    if not loggers:
        return
    # mmap: only the few bytes of the callback states are read, not the weights.
    run_id = read_checkpoint(checkpoint, mmap=True).callback_state(STATE_KEY).get("run_id")
    if run_id:
        for logger in loggers:
            logger.init_args["id"] = run_id
            logger.init_args["resume"] = "allow"


def name_wandb_run_after_config(loggers: list, config_files: list) -> None:
    """Name a W&B run without a ``name`` after the stem of the first ``--config`` file (``quickstart``).

    Left alone: a ``name`` set in YAML or on the command line, a run being continued (an ``id``, given or
    taken from the checkpoint: it keeps its name), and the runs of a sweep (``WANDB_SWEEP_ID``), which
    W&B names one by one.
    """
    if not config_files or os.environ.get("WANDB_SWEEP_ID"):
        return
    stem = Path(str(config_files[0])).stem
    for logger in loggers:
        if not logger.init_args.get("name") and not logger.init_args.get("id"):
            logger.init_args["name"] = stem


def wandb_run_location(run) -> str:
    """One line that says where a started W&B run is: its URL, or offline its folder and the command that uploads it."""
    if run.offline:
        return f"W&B run {run.name!r} is offline in {run.sync_dir}; upload it with `wandb sync {run.sync_dir}`"
    return f"W&B run {run.name!r}: {run.url}"


def _wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
