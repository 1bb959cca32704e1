"""What a data folder holds: its files and labels, whether they are images or arrays, and a split by fraction.

A folder is read with class sub-folders as labels when all it holds (hidden entries aside) are
sub-folders, each searched recursively, and as unlabelled files (target -1, searched recursively)
otherwise: the rules of torchvision's ImageFolder and of a flat folder, decided once per folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mae_lightning.data.arrays import ARRAY_EXTENSIONS, PNG_EXTENSIONS
from mae_lightning.data.datasets import IMAGE_EXTENSIONS

DATA_EXTENSIONS = tuple(dict.fromkeys((*IMAGE_EXTENSIONS, *ARRAY_EXTENSIONS)))
FILE_KINDS = ("image", "array")


@dataclass
class FolderFiles:
    """The data files of a folder: ``samples`` are (path, target) pairs, targets index ``classes`` or are -1."""

    root: Path
    samples: list[tuple[str, int]]
    classes: list[str] = field(default_factory=list)


def list_folder(root: Path, extensions: tuple[str, ...] = DATA_EXTENSIONS, kind: str = "image or array") -> FolderFiles:
    """The data files under ``root`` (any image or array suffix; or ``extensions``, files of ``kind`` in messages),
    sorted, with labels from class sub-folders.

    Raises:
        FileNotFoundError: no data file under ``root``, or a class sub-folder without one (one line each).
    """
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if entries and all(p.is_dir() for p in entries):
        classes = [p.name for p in entries]
        samples = []
        for target, folder in enumerate(entries):
            files = _data_files(folder, extensions)
            if not files:
                raise FileNotFoundError(
                    f"class folder {str(folder)!r} holds no {kind} file ({', '.join(extensions)}): "
                    "remove it or fill it (data.init_args.root)"
                )
            samples += [(path, target) for path in files]
        return FolderFiles(root, samples, classes)
    files = _data_files(root, extensions)
    if not files:
        raise FileNotFoundError(
            f"no {kind} files ({', '.join(extensions)}) found under {str(root)!r} (data.init_args.root)"
        )
    return FolderFiles(root, [(path, -1) for path in files])


def _data_files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .ipynb_checkpoints, .git, ...
        found += [os.path.join(dirpath, name) for name in filenames if name.lower().endswith(extensions)]
    return sorted(found)


def file_kind(paths: list[str], folder: Path, forced: str | None = None) -> str:
    """``"image"`` or ``"array"``: what the files of ``folder`` are, by the rules of ``ImageFolderDataModule``'s
    ``file_kind`` argument (``forced``).

    Raises:
        ValueError: images and arrays together, or files of the other kind than ``forced`` (one line).
    """
    arrays = [p for p in paths if p.lower().endswith(".npy")]
    images = [p for p in paths if not p.lower().endswith(ARRAY_EXTENSIONS)]
    if arrays and images:
        raise ValueError(
            f"{str(folder)!r} holds both image files ({Path(images[0]).name}, ...) and .npy arrays "
            f"({Path(arrays[0]).name}, ...): keep one kind under data.init_args.root"
        )
    kind = forced or ("image" if images else "array")
    other = [p for p in images if not p.lower().endswith(PNG_EXTENSIONS)] if kind == "array" else arrays
    if other:
        raise ValueError(
            f"data.init_args.file_kind={kind!r}, but {str(folder)!r} holds {Path(other[0]).name}, which is not "
            f"read as {'an array' if kind == 'array' else 'an image'}"
        )
    return kind


def split_by_fraction(files: FolderFiles, fraction: float, seed: int) -> tuple[FolderFiles, FolderFiles]:
    """``files`` cut into (train, val) at random by ``seed``, ``fraction`` of each class to val (stratified).

    Each class (or all files, unlabelled) gives ``round(n * fraction)`` files to validation, kept in
    sorted order on both sides; the same files and seed always give the same split.

    Raises:
        ValueError: a part would be empty (one line naming the folder and ``val_fraction``).
    """
    rng = np.random.default_rng(seed)
    by_target: dict[int, list[tuple[str, int]]] = {}
    for sample in files.samples:
        by_target.setdefault(sample[1], []).append(sample)
    val_set: set[str] = set()
    for target in sorted(by_target):
        group = by_target[target]
        picked = rng.permutation(len(group))[: round(len(group) * fraction)]
        val_set.update(group[i][0] for i in picked.tolist())
    train = [s for s in files.samples if s[0] not in val_set]
    val = [s for s in files.samples if s[0] in val_set]
    if not train or not val:
        raise ValueError(
            f"data.init_args.val_fraction={fraction} leaves no {'validation' if not val else 'training'} file "
            f"among the {len(files.samples)} under {str(files.root)!r}"
        )
    return FolderFiles(files.root, train, files.classes), FolderFiles(files.root, val, files.classes)
