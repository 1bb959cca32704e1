"""Shared fixtures: a run in the test's own folder, one torch thread, image folders written with PIL, a small real
CIFAR-10 subset from the shared archive, and W&B's folders under the test's."""

from __future__ import annotations

import os
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import CIFAR10_CLASSES, CIFAR10_TEST_PER_CLASS, CIFAR10_TRAIN_PER_CLASS, REPO

# In CI the repository is a fresh clone with shared/ beside it; MAE_CIFAR10_JPEG overrides the location.
DEFAULT_CIFAR10_JPEG = REPO.parent / "shared/data/cifar10-jpeg.tar.gz"


@pytest.fixture
def run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative paths of the configs (runs/, data/) land in the test's own folder; main() gets its own arguments."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])  # main() gets its arguments, not pytest's
    return tmp_path


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: a tiny model gains nothing from two, and loses a lot when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """Write a random image of PIL ``mode`` and (width, height) ``size``; the suffix of ``path`` picks the format."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")
        img = rgb.quantize(16) if mode == "P" else rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def make_image():
    """:func:`write_image`, for tests that build their own folders."""
    return write_image


@pytest.fixture
def imagenet_style_root(tmp_path: Path) -> Path:
    """root/train/<class>/*.jpg (2 classes x 6 images) and root/val/<class>/*.png (2 classes x 2 images)."""
    root = tmp_path / "imagenet_style"
    for label, name in enumerate(("cat", "dog")):
        for i in range(6):
            write_image(root / "train" / name / f"{i}.jpg", seed=10 * label + i)
        for i in range(2):
            write_image(root / "val" / name / f"{i}.png", seed=100 + 10 * label + i)
    return root


def _cifar10_archive() -> Path:
    return Path(os.environ.get("MAE_CIFAR10_JPEG") or DEFAULT_CIFAR10_JPEG)


@pytest.fixture(scope="session")
def cifar10_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A balanced real CIFAR-10 subset, root/train/<class>/*.jpg (200 per class) and root/test/<class>/*.jpg (50).

    Streams the archive once and copies only the first images of each class; skips when the archive is absent.
    """
    archive = _cifar10_archive()
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {archive} (set MAE_CIFAR10_JPEG to its path)")
    quota = {"train": CIFAR10_TRAIN_PER_CLASS, "test": CIFAR10_TEST_PER_CLASS}
    root = tmp_path_factory.mktemp("cifar10")
    counts: Counter[tuple[str, str]] = Counter()
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            # Members are [<top>/]<split>/<class>/<file>.jpg.
            if not member.isfile() or len(parts) < 3 or parts[-3] not in quota or not parts[-1].endswith(".jpg"):
                continue
            split, label, name = parts[-3:]
            if counts[split, label] >= quota[split]:
                continue
            counts[split, label] += 1
            target = root / split / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    for split, per_class in quota.items():
        for label in CIFAR10_CLASSES:
            assert counts[split, label] == per_class, f"archive {archive} has too few {split}/{label} images"
    return root


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wandb's folders, config and HOME (no ~/.netrc, so no API key) all under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")  # no system-metrics sampler on a 2-core machine
    return tmp_path
