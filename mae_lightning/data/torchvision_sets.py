"""The datasets torchvision ships and downloads: CIFAR-10, CIFAR-100, STL-10."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from mae_lightning.data.base import MAEDataModule


class _TorchvisionDataModule(MAEDataModule):
    """Shared code of the torchvision datasets: ``root`` plus an explicit ``download`` switch."""

    def __init__(
        self, root: str | Path = "data", download: bool = False, eval_crop_ratio: float = 1.0, **kwargs
    ) -> None:
        super().__init__(eval_crop_ratio=eval_crop_ratio, **kwargs)
        self.root = str(root)
        self.download = download

    def prepare_data(self) -> None:
        # Runs on one process per node: downloads here, never in setup.
        if self.download:
            self._make(train=True, transform=None, download=True)
            self._make(train=False, transform=None, download=True)

    def build_dataset(self, split: str, transform: Callable) -> Dataset:
        return self._make(train=split == "train", transform=transform, download=False)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        raise NotImplementedError


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (50k/10k 32x32 images) through torchvision; ``download: true`` fetches it once."""

    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)
    dataset_class = datasets.CIFAR10
    num_classes = 10

    def __init__(
        self, root: str | Path = "data", download: bool = False, img_size: int | tuple[int, int] = 32, **kwargs
    ) -> None:
        super().__init__(root=root, download=download, img_size=img_size, **kwargs)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        return self.dataset_class(self.root, train=train, transform=transform, download=download)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50k/10k 32x32 images, 100 classes) through torchvision."""

    default_mean = (0.5071, 0.4865, 0.4409)
    default_std = (0.2673, 0.2564, 0.2762)
    dataset_class = datasets.CIFAR100
    num_classes = 100


class STL10DataModule(_TorchvisionDataModule):
    """STL-10 through torchvision: pretrains on ``train+unlabeled`` (105k 96x96 images), validates on ``test``."""

    default_mean = (0.4467, 0.4398, 0.4066)
    default_std = (0.2603, 0.2566, 0.2713)
    num_classes = 10  # of the labelled images; the unlabelled ones have target -1

    def __init__(
        self, root: str | Path = "data", download: bool = False, img_size: int | tuple[int, int] = 96, **kwargs
    ) -> None:
        super().__init__(root=root, download=download, img_size=img_size, **kwargs)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        split = "train+unlabeled" if train else "test"
        return datasets.STL10(self.root, split=split, transform=transform, download=download)
