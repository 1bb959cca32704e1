"""Log how many unreadable files (images or arrays) the training data skipped."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn


class LogSkippedImages(Callback):
    """Log ``data/skipped_images`` at the end of every training epoch and warn when it is not zero.

    The count comes from the training set's ``num_skipped`` (see ``SkipUnreadable``), which workers
    update through shared memory; datasets without it are left alone. Bad arrays (unreadable, wrong
    shape, NaN or infinite values) count here as bad images do; the metric keeps its name.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = getattr(trainer.datamodule, "train_set", None)
        skipped = getattr(dataset, "num_skipped", None)
        if skipped is None:
            return
        pl_module.log("data/skipped_images", float(skipped), on_epoch=True, on_step=False, reduce_fx="max")
        if skipped:
            kind = getattr(dataset, "kind", "image")
            rank_zero_warn(f"{skipped} of {len(dataset)} training {kind} files were unreadable and skipped so far")
