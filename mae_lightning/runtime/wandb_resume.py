"""Keep the W&B run id in checkpoints, so a resumed run continues the same W&B run."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

STATE_KEY = "KeepWandbRunId"


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


def run_id_in_checkpoint(checkpoint: dict[str, Any]) -> str | None:
    """The W&B run id that :class:`KeepWandbRunId` stored in ``checkpoint``, if any."""
    return checkpoint.get("callbacks", {}).get(STATE_KEY, {}).get("run_id")
