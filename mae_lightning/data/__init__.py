"""Data: DataModules (one per source) and the MAE transforms."""

from mae_lightning.data.arrays import ReadArray
from mae_lightning.data.datamodule import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MAEDataModule,
    STL10DataModule,
)
from mae_lightning.data.datasets import Digits, FileList, FlatImageFolder
from mae_lightning.data.shards import StreamingDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "Digits",
    "DigitsDataModule",
    "FileList",
    "FlatImageFolder",
    "ImageFolderDataModule",
    "MAEDataModule",
    "ReadArray",
    "STL10DataModule",
    "StreamingDataModule",
]
