"""Masked Autoencoder pretraining with PyTorch Lightning."""

from mae_lightning.callbacks import (
    EmbeddingWriter,
    KNNMonitor,
    ReconstructionCallback,
    SegmentationMaskWriter,
    SegmentationReport,
)
from mae_lightning.classify import FineTune, ImageClassification, LinearProbe
from mae_lightning.data import (
    AudioFolderDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MAEDataModule,
    SegmentationDataModule,
    STL10DataModule,
    StreamingDataModule,
)
from mae_lightning.masking import (
    BlockMasking,
    FrequencyMasking,
    GridMasking,
    MaskingStrategy,
    RandomMasking,
    TimeFrequencyMasking,
    TimeMasking,
)
from mae_lightning.models import MaskedAutoencoder, Segmenter, VisionTransformer
from mae_lightning.pretrain import MAEPretraining
from mae_lightning.runtime import RollbackOnNonFiniteLoss, WandbLogger
from mae_lightning.segment import Segmentation

__version__ = "0.1.0"

__all__ = [
    "AudioFolderDataModule",
    "BlockMasking",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "EmbeddingWriter",
    "FineTune",
    "FrequencyMasking",
    "GridMasking",
    "ImageClassification",
    "ImageFolderDataModule",
    "KNNMonitor",
    "LinearProbe",
    "MAEDataModule",
    "MAEPretraining",
    "MaskedAutoencoder",
    "MaskingStrategy",
    "RandomMasking",
    "ReconstructionCallback",
    "RollbackOnNonFiniteLoss",
    "STL10DataModule",
    "Segmentation",
    "SegmentationDataModule",
    "SegmentationMaskWriter",
    "SegmentationReport",
    "Segmenter",
    "StreamingDataModule",
    "TimeFrequencyMasking",
    "TimeMasking",
    "VisionTransformer",
    "WandbLogger",
]
