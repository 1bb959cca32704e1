"""Stop a run whose loss turns NaN or infinite before a poisoned model reaches a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError`, naming the first bad step, when the training loss is not finite.

    Checking ``loss.isfinite()`` on the host every step would stall the GPU queue once per step. The
    check instead records on the device the first step whose loss was not finite (no synchronisation),
    and looks at that record on the host only when the host waits anyway (at the steps where
    Lightning logs, every ``log_every_n_steps``) and before every checkpoint is written, so a model
    that went bad never replaces the last good checkpoint. With ``check_every_n_steps=1`` the run
    stops at the bad step itself.

    Args:
        check_every_n_steps: host check interval; ``None`` takes the trainer's ``log_every_n_steps``.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps <= 0:
            raise ValueError(f"check_every_n_steps must be a positive integer or None, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._record(trainer, outputs)
        every = self.check_every_n_steps or trainer.log_every_n_steps or 1
        if trainer.global_step % every == 0:
            self._on_check(trainer, pl_module)

    def _on_check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """What a host check does: raise when a step since the last one was not finite (the rollback overrides it)."""
        self._raise_if_bad()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Raised while the checkpoint is assembled: the file on disk stays the previous, good one.
        self._raise_if_bad()

    def _record(self, trainer: Trainer, outputs: Any) -> None:
        """Note on the device (no synchronisation) the first step whose loss was not finite."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        # global_step already counts this step's optimizer update: the loss belongs to step global_step - 1.
        step = torch.tensor(trainer.global_step - 1, device=loss.device)
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(bad_now & (self._first_bad < 0), step, self._first_bad)

    def _raise_if_bad(self, first_bad: int | None = None) -> None:
        """Raise :class:`NonFiniteLossError` when a recorded step (or ``first_bad``, read already) was not finite."""
        if first_bad is None:
            if self._first_bad is None:
                return
            first_bad = int(self._first_bad)  # the one host synchronisation
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"the training loss is not finite (NaN or inf) at step {first_bad}; the last checkpoint saved "
                "before it is unchanged. Lower the learning rate, set `trainer.gradient_clip_val`, or check the "
                "input data, then resume with `--ckpt_path last` (or roll back and train on: "
                "configs/presets/nan_rollback.yaml)"
            )
