"""What keeps runs alive and right, apart from the method: nothing here changes what MAE learns.

The command line adds these callbacks to every run (``cli.py``).
"""

from mae_lightning.runtime.checkpoint_io import AtomicCheckpointIO
from mae_lightning.runtime.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from mae_lightning.runtime.preemption import CheckpointOnPreemption
from mae_lightning.runtime.rng_state import RNGStateCheckpoint
from mae_lightning.runtime.rollback import RollbackOnNonFiniteLoss
from mae_lightning.runtime.skipped_images import LogSkippedImages
from mae_lightning.runtime.wandb_artifacts import WandbLogger
from mae_lightning.runtime.wandb_run import KeepWandbRunId

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnPreemption",
    "KeepWandbRunId",
    "LogSkippedImages",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "RollbackOnNonFiniteLoss",
    "StopOnNonFiniteLoss",
    "WandbLogger",
]
