"""Roll a run back to its last good state when the loss turns NaN or infinite, and train on.

The opt-in policy beside :class:`~mae_lightning.runtime.StopOnNonFiniteLoss` (the default, which stops): add
``configs/presets/nan_rollback.yaml``, or the callback to ``trainer.callbacks``, and the run heals itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from mae_lightning.runtime.finite_loss import StopOnNonFiniteLoss


class RollbackOnNonFiniteLoss(StopOnNonFiniteLoss):
    """Restore the last good state when the training loss is not finite, skip the batches since, and train on.

    At every host check (see :class:`StopOnNonFiniteLoss`; every process checks at the same steps, and the worst
    process decides for all) the weights and the optimiser state are kept in memory while every loss since the last
    check was finite. When one was not, every process restores that state together and goes on with the next batch:
    the batches since the good state, the one that produced the NaN among them, are skipped. The learning rate of
    the rest of the run is multiplied by ``lr_scale`` and, with ``decoder_fp32``, the MAE decoder runs in full
    precision under mixed precision from then on. Each rollback is logged (``train/rollbacks``) and warned about;
    past ``max_rollbacks`` the run stops as with the ``stop`` policy. Nothing is drawn at random here: the same
    seed and the same fault give the same run. Keeping the state costs one copy of the weights and of the
    optimiser state in the memory they live in; checking every few steps keeps the lost work short.

    Args:
        check_every_n_steps: host check (and snapshot) interval; ``None`` takes the trainer's ``log_every_n_steps``.
        max_rollbacks: rollbacks after which a non-finite loss stops the run.
        lr_scale: factor on the learning rate schedule at each rollback (1.0 keeps it).
        decoder_fp32: after a rollback, keep the MAE decoder in fp32 (a model with a ``decoder_fp32`` attribute).
    """

    def __init__(
        self,
        check_every_n_steps: int | None = None,
        max_rollbacks: int = 3,
        lr_scale: float = 1.0,
        decoder_fp32: bool = False,
    ) -> None:
        super().__init__(check_every_n_steps)
        if max_rollbacks < 0 or not 0 < lr_scale <= 1:
            raise ValueError(f"max_rollbacks must be >= 0 and lr_scale in (0, 1], got {max_rollbacks}, {lr_scale}")
        self.max_rollbacks = max_rollbacks
        self.lr_scale = lr_scale
        self.decoder_fp32 = decoder_fp32
        self.rollbacks = 0
        self._good: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rollbacks:  # a resumed run that had rolled back keeps what the rollbacks changed
            self._harden(pl_module, lr=False)
        self._keep_good_state(trainer, pl_module)

    def _on_check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer, pl_module, log=True)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint between two checks: checked now, and written from the restored state if it rolled back.
        if self._check(trainer, pl_module, log=False):  # (no metric can be logged while a checkpoint is written)
            checkpoint["state_dict"] = trainer.strategy.lightning_module_state_dict()
            checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state(opt) for opt in trainer.optimizers]

    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollbacks = state_dict.get("rollbacks", 0)

    def _check(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> bool:
        """Roll back when a loss since the last check was not finite, else keep this state; True when it rolled back."""
        if self._first_bad is None:
            return False
        first_bad = int(trainer.strategy.reduce(self._first_bad.clone(), reduce_op="max"))  # every process agrees
        if first_bad < 0:
            self._keep_good_state(trainer, pl_module)
            return False
        if self.rollbacks >= self.max_rollbacks:
            self._raise_if_bad(first_bad)
        self.rollbacks += 1
        self._restore_good_state(trainer, pl_module)
        self._first_bad.fill_(-1)
        self._harden(pl_module, lr=True)
        if log:
            pl_module.log("train/rollbacks", float(self.rollbacks), on_step=True, on_epoch=False)
        rank_zero_warn(
            f"the training loss was not finite at step {first_bad}: rolled back to the state of step "
            f"{self._good['step']} and skipped the batches since (rollback {self.rollbacks} of at most "
            f"{self.max_rollbacks})"
        )
        return True

    def _harden(self, pl_module: LightningModule, lr: bool) -> None:
        """Lower the learning rate (a factor the checkpoint keeps) and keep the decoder in fp32, as configured."""
        if lr and hasattr(pl_module, "lr_scale"):
            pl_module.lr_scale *= self.lr_scale
        model = getattr(pl_module, "model", None)
        if self.decoder_fp32 and hasattr(model, "decoder_fp32"):
            model.decoder_fp32 = True

    def _keep_good_state(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Each process keeps its own tensors (under FSDP its shards), so nothing is gathered.
        self._good = {
            "step": trainer.global_step,
            "tensors": [t.detach().clone() for t in _tensors(pl_module)],
            "optimizers": [copy.deepcopy(optimizer.state_dict()) for optimizer in trainer.optimizers],
        }

    def _restore_good_state(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with torch.no_grad():
            for tensor, good in zip(_tensors(pl_module), self._good["tensors"], strict=True):
                tensor.copy_(good)
        for optimizer, state in zip(trainer.optimizers, self._good["optimizers"], strict=True):
            optimizer.load_state_dict(copy.deepcopy(state))


def _tensors(pl_module: LightningModule) -> list[torch.Tensor]:
    return [*pl_module.parameters(), *pl_module.buffers()]
