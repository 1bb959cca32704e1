"""scikit-learn's bundled handwritten digits: the offline dataset of the quickstart, and its DataModule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mae_lightning.data.base import MAEDataModule


class Digits(Dataset):
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale scans, 10 classes.

    They ship inside the scikit-learn wheel, so a first run needs no download, and they carry
    labels for probing. Split deterministically: the first 1,500 images train, the last 297 validate.

    Args:
        split: ``"train"`` or ``"val"``.
        transform: applied to each 8x8 PIL image (mode ``"L"``).
    """

    num_train = 1500

    def __init__(self, split: str = "train", transform: Callable | None = None) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        # Pixel values are 0..16: stretch them to the 0..255 range of an 8-bit image.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        part = slice(None, self.num_train) if split == "train" else slice(self.num_train, None)
        self.images = images[part]
        self.targets = digits.target[part].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class DigitsDataModule(MAEDataModule):
    """scikit-learn's 8x8 handwritten digits, bundled offline (see :class:`Digits`); 1 channel by default."""

    default_mean = (0.3052,)  # of the 1,500 training images, pixels scaled to 0..1
    default_std = (0.3749,)
    num_classes = 10

    def __init__(self, img_size: int | tuple[int, int] = 32, in_chans: int = 1, **kwargs) -> None:
        super().__init__(img_size=img_size, in_chans=in_chans, **kwargs)

    def build_dataset(self, split: str, transform: Callable) -> Dataset:
        return Digits(split, transform)
