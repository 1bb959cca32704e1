"""The recipe every LightningModule here shares: the one base of pretraining, linear probing and fine-tuning.

:class:`Recipe` owns what is the same in every protocol: the learning rate scaled by the effective batch
(``lr = base_lr * batch_size * devices * nodes * accumulate_grad_batches / 256``) and set before every step from
the fractional epoch (linear warmup then cosine, ``optim.set_scheduled_lr``), their logging, the parameter shapes
recorded before a strategy wraps or shards the model (the optimiser groups are decided from them), a weights file
loaded once (never over a restored checkpoint) and handed to the DataModule for its stored statistics, and the
training loss and throughput logs. A protocol adds its steps and its optimiser.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from mae_lightning.optim import (
    check_schedule,
    check_warmup,
    parameter_shapes,
    scaled_lr,
    set_scheduled_lr,
    trainer_run_length,
)

# Where a checkpoint keeps the recipe's numbers of the run that wrote it.
CHECKPOINT_KEY = "mae_lightning"


class SetupError(ValueError):
    """The run cannot start as configured (found when the Trainer sets the module up); said in one line."""


class Recipe(LightningModule):
    """Base LightningModule: scaled lr, warmup-cosine schedule per step, weights loaded once, shared logs.

    Subclasses call ``super().__init__`` with their model and schedule, name the argument that holds their weights
    file in :attr:`weights_argument`, implement :meth:`load_weights_file`, ``training_step`` and
    ``configure_optimizers``. ``self._param_shapes`` holds the model's parameter shapes recorded in
    :meth:`configure_model`, before any wrapping.

    Args:
        model: the network the protocol trains (``self.model``).
        base_lr: learning rate per 256 images of effective batch.
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the cosine decay.
        weight_decay: weight decay of the weight matrices.
        warmup_epochs: epochs of linear warmup from 0 to the peak learning rate.
    """

    # The constructor argument that names the weights file to start from (None: the protocol has none).
    weights_argument: str | None = None
    # The decay after the warmup (a key of optim.LR_DECAYS).
    lr_decay: str = "cosine"

    def __init__(
        self,
        model: nn.Module,
        base_lr: float,
        lr: float | None,
        min_lr: float,
        weight_decay: float,
        warmup_epochs: float,
    ) -> None:
        super().__init__()
        check_schedule(base_lr, lr, min_lr, warmup_epochs, weight_decay)
        self._save_hparams(model, inspect.currentframe())
        self.model = model
        self.base_lr = base_lr
        self.lr = lr
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.effective_batch_size: int | None = None
        self.peak_lr: float | None = None
        # A factor on the whole schedule, lowered when a run rolls back from a NaN (runtime/rollback.py).
        self.lr_scale = 1.0
        self._param_shapes: dict | None = None
        # Set once the weights are in the model: from the weights file, or by a checkpoint being restored.
        self._weights_loaded = False
        self._load_error: Exception | None = None
        self._resumed_from: dict | None = None
        self._images_since_log = 0
        self._last_log_time = 0.0

    def _save_hparams(self, model: nn.Module, frame) -> None:
        """Hyperparameters that let a checkpoint rebuild this module, model included.

        Under LightningCLI they are the parsed config (the model as class_path + init_args), so a checkpoint
        rebuilds the whole module alone; a module built in Python keeps the other arguments (pass ``model=`` again
        to ``load_from_checkpoint``). ``frame`` is this class's ``__init__``: Lightning collects the arguments of
        every subclass's ``__init__`` from it and the frames that called it. The CLI links ``img_size`` and
        ``in_chans`` from ``data`` and leaves link targets out of its config, so the geometry of the model actually
        built is written in, or a reload would build a 224 px RGB model.
        """
        from_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if from_cli else ["model"], frame=frame)
        for hparams in (self.hparams, self._hparams_initial):
            if isinstance(hparams.get("model"), dict):
                geometry = {"img_size": list(model.img_size), "in_chans": model.in_chans}
                hparams["model"].setdefault("init_args", {}).update(geometry)

    # ------------------------------------------------------------------ weights
    @property
    def weights_file(self) -> str | None:
        """The weights file this module starts from (the value of :attr:`weights_argument`), or None."""
        return getattr(self, self.weights_argument) if self.weights_argument else None

    def load_weights_file(self, path: str, stage: str) -> bool:
        """Load ``path`` into ``self.model`` for ``stage``; return False when this stage loads nothing."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        # Before the strategy wraps or shards the model. Lightning restores a `ckpt_path` only after this hook and
        # does not say beforehand whether it will, so a load error waits for the first loop: a restore makes the
        # file moot.
        path = self.weights_file
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if path and hasattr(datamodule, "use_statistics_of"):
            # A probe or fine-tuning of array data normalises as its pretraining did.
            datamodule.use_statistics_of(path)
        self._load_error = None
        if not path or self._weights_loaded:
            return
        try:
            self._weights_loaded = self.load_weights_file(path, stage)
        except (OSError, ValueError) as err:
            # Without its traceback: the frames would keep the file's tensors alive through the restore.
            self._load_error = err.with_traceback(None)

    def _raise_load_error(self) -> None:
        if self._load_error is not None:
            raise self._load_error

    # The first hooks of the loops: any `ckpt_path` is restored by then, whatever the strategy.
    def on_train_epoch_start(self) -> None:
        self._raise_load_error()

    def on_validation_start(self) -> None:
        self._raise_load_error()

    def on_test_start(self) -> None:
        self._raise_load_error()

    def on_predict_start(self) -> None:
        self._raise_load_error()

    def configure_model(self) -> None:
        # Before any strategy wraps or shards the model: the optimiser groups are decided from these shapes.
        self._param_shapes = parameter_shapes(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        numbers = {
            "effective_batch_size": self.effective_batch_size,
            "peak_lr": self.peak_lr,
            "lr_scale": self.lr_scale,
        }
        checkpoint[CHECKPOINT_KEY] = numbers

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_from = checkpoint.get(CHECKPOINT_KEY)
        self.lr_scale = (self._resumed_from or {}).get("lr_scale", 1.0)
        self._weights_loaded = True
        self._load_error = None

    # ------------------------------------------------------------------ schedule
    def on_train_start(self) -> None:
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        if not batch_size:
            raise ValueError("the training DataLoader must have a fixed batch_size to scale the learning rate")
        self.effective_batch_size = batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        self.peak_lr = self.lr if self.lr is not None else scaled_lr(self.base_lr, self.effective_batch_size)
        rank_zero_info(
            f"Effective batch size {self.effective_batch_size} = {batch_size} per device x "
            f"{self.trainer.world_size} processes x {self.trainer.accumulate_grad_batches} accumulated; "
            f"peak lr {self.peak_lr:.3e}"
        )
        # Also into the run's record: the config (hyperparameters) and a metric at the first step.
        numbers = {"effective_batch_size": self.effective_batch_size, "peak_lr": self.peak_lr}
        for logger in self.trainer.loggers:
            logger.log_hyperparams(numbers)
            logger.log_metrics(numbers, step=self.trainer.global_step)
        previous = self._resumed_from
        if previous and previous.get("effective_batch_size") != self.effective_batch_size:
            rank_zero_warn(
                f"Resuming with effective batch size {self.effective_batch_size}, but the checkpoint was trained "
                f"with {previous.get('effective_batch_size')}: the peak lr changes from {previous.get('peak_lr'):.3e} "
                f"to {self.peak_lr:.3e}. Set `model.init_args.lr` to keep the old value."
            )
        check_warmup(self.warmup_epochs, trainer_run_length(self.trainer))
        self._images_since_log = 0
        self._last_log_time = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        scale = self.lr_scale
        set_scheduled_lr(
            self.trainer, batch_idx, self.peak_lr * scale, self.min_lr * scale, self.warmup_epochs, self.lr_decay
        )

    # ------------------------------------------------------------------ logs
    def log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Per step this process's loss (no synchronisation on the hot path); per epoch the mean over every process."""
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Host-side numbers only (python floats): no device synchronisation on the hot path. The peak lr of the
        # step: groups scaled down by layer decay have lower ones.
        self.log("lr", max(group["lr"] for group in self.trainer.optimizers[0].param_groups), on_step=True)
        self._images_since_log += len(batch[0])
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            now = time.perf_counter()
            elapsed = now - self._last_log_time
            if elapsed > 0:
                rate = self._images_since_log * self.trainer.world_size / elapsed
                self.log("train/images_per_sec", rate, on_step=True, on_epoch=False)
            self._images_since_log = 0
            self._last_log_time = now
