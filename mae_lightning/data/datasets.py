"""Datasets that torchvision does not ship: the offline digits set and a folder of unlabelled images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

# torchvision's list lacks GIF, which PIL reads (first frame).
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


def is_image_file(path: str) -> bool:
    """Whether ``path`` has the suffix of an image file that :func:`load_image` reads."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def load_image(path: str) -> Image.Image:
    """Open an image file as RGB, as torchvision's loader does, but scale 16-bit grayscale to 8 bits.

    PIL's own conversion clips 16-bit values at 255, which turns such an image almost all white.
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        if img.mode in ("I;16", "I;16L", "I;16B", "I"):
            img = Image.fromarray((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
        return img.convert("RGB")


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


class FlatImageFolder(Dataset):
    """Every image file below ``root`` (searched recursively), without labels (target -1).

    Args:
        root: folder of images.
        transform: applied to each loaded image.
        loader: reads one file (a PIL image by default).
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, loader: Callable = load_image) -> None:
        self.root = Path(root)
        self.samples = sorted(str(p) for p in self.root.rglob("*") if p.is_file() and is_image_file(p.name))
        if not self.samples:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        img = self.loader(self.samples[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, -1
