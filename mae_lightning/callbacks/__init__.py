"""Callbacks that show what pretraining learned, and write predictions."""

from mae_lightning.callbacks.embeddings import EmbeddingWriter
from mae_lightning.callbacks.knn import KNNMonitor, knn_scores
from mae_lightning.callbacks.reconstruction import ReconstructionCallback

__all__ = ["EmbeddingWriter", "KNNMonitor", "ReconstructionCallback", "knn_scores"]
