"""Reading image files, the dataset of listed files, and the skipping of unreadable ones."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

# torchvision's list lacks GIF, which PIL reads (first frame).
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


def is_image_file(path: str) -> bool:
    """Whether ``path`` has the suffix of an image file that :func:`load_image` reads."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


class UnreadableImageError(Exception):
    """A data file that cannot be used: an image PIL cannot decode (empty, truncated, not an image, too
    large), or an array that cannot be read or has the wrong shape or non-finite values (``data/arrays.py``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


# PIL modes of 16-bit (and 32-bit integer) grayscale images; PIL's own conversion would clip them at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")


def load_image(path: str | bytes) -> Image.Image:
    """Open an image file (a path, or the file's bytes) as RGB, as torchvision's loader does, but scale 16-bit
    grayscale to 8 bits (their top byte; :class:`ReadImage` says so once). Truncated files are not patched up
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays as the user set it).

    Raises:
        UnreadableImageError: the file is empty, truncated, not an image, or over PIL's pixel limit.
    """
    return _open_image(path)[0]


def _open_image(path: str | bytes) -> tuple[Image.Image, bool]:
    """(the image as RGB, whether it had 16 bits per pixel and was reduced to 8)."""
    try:
        with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as f:
            img = Image.open(f)
            sixteen_bit = img.mode in _SIXTEEN_BIT_MODES
            if sixteen_bit:
                img = Image.fromarray((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
            return img.convert("RGB"), sixteen_bit
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports a bad file as any of these (SyntaxError and ValueError from some decoders).
        raise UnreadableImageError(_name(path), f"{type(err).__name__}: {err}") from err


def _name(path: str | bytes) -> str:
    return "<image bytes>" if isinstance(path, bytes) else path


def warn_8_bits(path: str | bytes) -> None:
    """Say that 16-bit images are read with 8 bits, naming ``path`` and the setting that keeps their full range."""
    warnings.warn(
        f"{_name(path)} is a 16-bit image: it is read with 8 bits (the top 8 of 16, so a dim image keeps few "
        "grey levels), as are the other 16-bit images here. ImageFolderDataModule with data.init_args.file_kind: "
        "array reads 16-bit PNG and TIFF files with their full range, normalised per band",
        stacklevel=3,
    )


class ReadImage:
    """Loader: :func:`load_image`, saying once (:func:`warn_8_bits`; once per DataLoader worker at most) when it
    reduces 16-bit images to 8 bits."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, path: str | bytes) -> Image.Image:
        img, sixteen_bit = _open_image(path)
        if sixteen_bit and not self.warned:
            self.warned = True
            warn_8_bits(path)
        return img


class FileList(Dataset):
    """Listed files and their targets: a folder's dataset once it is listed (see ``data/folders.py``).

    Args:
        samples: (path, target) pairs; target -1 for an unlabelled file.
        classes: the class names that targets index (empty when unlabelled).
        loader: reads one file; raises :class:`UnreadableImageError` for a bad one.
        transform: applied to what the loader returns.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: list[str],
        loader: Callable,
        transform: Callable | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [target for _, target in self.samples]
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        sample = self.loader(path)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, target


class SkipUnreadable(Dataset):
    """Replace an unreadable file (image or array) by the next readable one, warn naming the file, and count it.

    The marks live in shared memory, so files found bad in DataLoader workers are counted in the
    main process too (``num_skipped``). When more than ``max_bad_fraction`` of all files are bad
    the data is broken rather than noisy, and reading stops with an error.

    Args:
        dataset: a dataset with ``samples`` ((path, target) pairs) whose loader raises :class:`UnreadableImageError`.
        max_bad_fraction: share of unreadable files tolerated, in [0, 1] (the DataModule checks it).
        kind: what the files are, in messages: ``"image"`` or ``"array"``.
    """

    def __init__(self, dataset: Dataset, max_bad_fraction: float, kind: str = "image") -> None:
        self.dataset = dataset
        self.max_bad_fraction = max_bad_fraction
        self.kind = kind
        self.bad = torch.zeros(len(dataset), dtype=torch.bool).share_memory_()  # type: ignore[arg-type]

    @property
    def num_skipped(self) -> int:
        """Distinct files found unreadable so far (in any worker)."""
        return int(self.bad.sum())

    def __len__(self) -> int:
        return len(self.bad)

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        size = len(self.bad)
        for step in range(size):
            candidate = (index + step) % size
            if self.bad[candidate]:
                continue
            try:
                return self.dataset[candidate]
            except UnreadableImageError as err:
                self._mark_bad(candidate, err)
        raise RuntimeError(f"none of the {size} {self.kind} files can be read (first: {self.dataset.samples[0][0]})")

    def _mark_bad(self, index: int, err: UnreadableImageError) -> None:
        self.bad[index] = True
        warnings.warn(f"skipping unreadable {self.kind} {err}", stacklevel=2)
        skipped, total = self.num_skipped, len(self.bad)
        if skipped > self.max_bad_fraction * total:
            raise RuntimeError(
                f"{skipped} of {total} {self.kind} files are unreadable (last: {err.path}), more than "
                f"data.init_args.max_bad_image_fraction={self.max_bad_fraction}: fix or remove them, "
                "or raise that setting (a value in [0, 1])"
            )


def check_first_readable(read: Callable[[int], object], count: int, what: str, in_chans: int) -> None:
    """Read items ``0, 1, ...`` with ``read`` up to the first that reads, so that data no worker could use stops a run
    before it starts, in one line: a file of another band count than ``in_chans`` at once (the arrays'
    ``BandCountError``), and ``count`` unreadable items (``what``, e.g. "image files under 'data/train'").

    Raises:
        ValueError: naming the file of another band count, or the first unreadable one.
    """
    from mae_lightning.data.arrays import BandCountError  # arrays.py imports this module

    first_error = None
    for index in range(count):
        try:
            read(index)
            return
        except BandCountError as err:
            raise ValueError(
                f"{err.path} has {err.bands} bands, but data.init_args.in_chans={in_chans}: set in_chans to the band "
                "count of the files"
            ) from None
        except UnreadableImageError as err:
            first_error = first_error or err
    raise ValueError(
        f"none of the {count} {what} can be read (first: {first_error}): fix them, or point data.init_args.root at "
        "readable data"
    )
