"""Save ``last.ckpt`` when the job is told to stop (SIGTERM), so the next start loses no step."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class CheckpointOnPreemption(Callback):
    """On SIGTERM, write the run's ``last.ckpt`` and let the process exit; ``--ckpt_path last`` resumes there.

    Lightning turns SIGTERM into a ``SIGTERMException`` raised after the current step (on every rank
    at once in a multi-process run); this callback saves the checkpoint that the exception would
    otherwise lose, into the folder of the run's ``ModelCheckpoint`` where ``ckpt_path=last`` looks.
    Without a ``ModelCheckpoint`` nothing is saved. On SLURM, Lightning's own ``SLURMEnvironment``
    handles the requeue signal (SIGUSR1 by default): it saves an ``hpc_ckpt_*.ckpt`` that the
    requeued job loads by itself.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM at step {trainer.global_step}: saved {path}; resume with `--ckpt_path last`")
