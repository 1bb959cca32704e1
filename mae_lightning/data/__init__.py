"""Data: DataModules (a base in ``base.py``, one file per source), their pipelines and the MAE transforms."""

from mae_lightning.data.arrays import ReadArray
from mae_lightning.data.audio_folder import AudioFolderDataModule
from mae_lightning.data.base import MAEDataModule
from mae_lightning.data.datasets import FileList
from mae_lightning.data.digits import Digits, DigitsDataModule
from mae_lightning.data.image_folder import ImageFolderDataModule
from mae_lightning.data.segmentation import SegmentationDataModule
from mae_lightning.data.shards import StreamingDataModule
from mae_lightning.data.torchvision_sets import CIFAR10DataModule, CIFAR100DataModule, STL10DataModule

__all__ = [
    "AudioFolderDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "Digits",
    "DigitsDataModule",
    "FileList",
    "ImageFolderDataModule",
    "MAEDataModule",
    "ReadArray",
    "STL10DataModule",
    "SegmentationDataModule",
    "StreamingDataModule",
]
