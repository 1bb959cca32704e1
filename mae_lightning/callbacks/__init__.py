"""Callbacks that make long runs survive: exact resume, preemption and numerical faults."""

from mae_lightning.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from mae_lightning.callbacks.preemption import CheckpointOnPreemption
from mae_lightning.callbacks.rng_state import RNGStateCheckpoint
from mae_lightning.callbacks.skipped_images import LogSkippedImages
from mae_lightning.callbacks.wandb_resume import KeepWandbRunId

__all__ = [
    "CheckpointOnPreemption",
    "KeepWandbRunId",
    "LogSkippedImages",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "StopOnNonFiniteLoss",
]
