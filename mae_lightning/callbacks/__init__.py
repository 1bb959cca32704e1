"""Callbacks that measure what pretraining learned: kNN and online probe, reconstructions, embeddings.

The machinery that keeps runs alive (random state, preemption, NaN stop, ...) is in ``mae_lightning.runtime``.
"""

from mae_lightning.callbacks.embeddings import EmbeddingWriter
from mae_lightning.callbacks.knn import KNNMonitor, knn_scores
from mae_lightning.callbacks.reconstruction import ReconstructionCallback
from mae_lightning.callbacks.segmentation import SegmentationMaskWriter, SegmentationReport

__all__ = [
    "EmbeddingWriter",
    "KNNMonitor",
    "ReconstructionCallback",
    "SegmentationMaskWriter",
    "SegmentationReport",
    "knn_scores",
]
