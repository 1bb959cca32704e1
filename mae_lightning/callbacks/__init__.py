"""Callbacks: what pretraining learned (kNN, reconstructions, embeddings) and runs that survive."""

from mae_lightning.callbacks.embeddings import EmbeddingWriter
from mae_lightning.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from mae_lightning.callbacks.knn import KNNMonitor, knn_scores
from mae_lightning.callbacks.preemption import CheckpointOnPreemption
from mae_lightning.callbacks.reconstruction import ReconstructionCallback
from mae_lightning.callbacks.rng_state import RNGStateCheckpoint
from mae_lightning.callbacks.skipped_images import LogSkippedImages
from mae_lightning.callbacks.wandb_resume import KeepWandbRunId

__all__ = [
    "CheckpointOnPreemption",
    "EmbeddingWriter",
    "KNNMonitor",
    "KeepWandbRunId",
    "LogSkippedImages",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "ReconstructionCallback",
    "StopOnNonFiniteLoss",
    "knn_scores",
]
