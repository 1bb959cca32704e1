"""Masked Autoencoder pretraining with PyTorch Lightning."""

from mae_lightning.callbacks import EmbeddingWriter, KNNMonitor, ReconstructionCallback
from mae_lightning.classify import FineTune, ImageClassification, LinearProbe
from mae_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MAEDataModule,
    STL10DataModule,
    StreamingDataModule,
)
from mae_lightning.masking import BlockMasking, GridMasking, MaskingStrategy, RandomMasking
from mae_lightning.models import MaskedAutoencoder, VisionTransformer
from mae_lightning.pretrain import MAEPretraining
from mae_lightning.runtime import RollbackOnNonFiniteLoss, WandbLogger

__version__ = "0.1.0"

__all__ = [
    "BlockMasking",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "EmbeddingWriter",
    "FineTune",
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
    "StreamingDataModule",
    "VisionTransformer",
    "WandbLogger",
]
