"""Arrays of any band count on disk (multispectral, hyperspectral, SAR, ...): reading, transforms and statistics.

Two file kinds are read, each as a (C, H, W) float32 tensor in the file's own units (no /255):

- ``.npy`` files shaped (C, H, W) (numpy's own format, no pickled objects);
- ``.tif`` / ``.tiff`` files, read with ``tifffile``, in either layout: bands first (C, H, W), as
  band-separate (planar) GeoTIFFs are read, or bands last (H, W, C), as pixel-interleaved ones are.
  A file that marks its last axis as interleaved samples is (H, W, C); otherwise the bands are the
  end of the shape with ``in_chans`` entries, the first one when both ends have. Compressed TIFFs
  other than deflate (LZW, JPEG, ...) need the ``imagecodecs`` package, which tifffile names when
  it is missing.

A 2-D file is one band. A file with another band count, another number of dimensions, NaN or
infinite values, or that cannot be read raises :class:`~mae_lightning.data.datasets.UnreadableImageError`,
so :class:`~mae_lightning.data.datasets.SkipUnreadable` skips and counts it like a bad image.

The crops and flips are torchvision's v2 transforms, which act on (C, H, W) tensors of any C; the
values are normalised per band (:class:`NormalizeBands`) with the mean and std that the DataModule
was given or computed from the training files (:func:`band_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tifffile
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mae_lightning.data.datasets import UnreadableImageError

TIFF_EXTENSIONS = (".tif", ".tiff")
ARRAY_EXTENSIONS = (".npy", *TIFF_EXTENSIONS)
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


class BandCountError(UnreadableImageError):
    """An array whose band count is not the ``in_chans`` the model expects."""

    def __init__(self, path: str, bands: int, in_chans: int) -> None:
        super().__init__(path, f"{bands} bands, not in_chans={in_chans}")
        self.bands = bands


class ReadArray:
    """Loader: an array file to a (in_chans, H, W) float32 tensor in the file's own units.

    Args:
        in_chans: bands every file must have.

    Raises:
        UnreadableImageError: the file cannot be read, is not 2-D or 3-D, or holds NaN or infinite values.
        BandCountError: the file has another band count.
    """

    def __init__(self, in_chans: int) -> None:
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.in_chans = in_chans

    def __call__(self, path: str) -> Tensor:
        array, layout = _read(path)
        array = _bands_first(array, layout, self.in_chans, path)
        # float32 first: a uint16 band stays exact, and the finiteness test below needs floats.
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise UnreadableImageError(path, "holds NaN or infinite values")
        return torch.from_numpy(array)


def _read(path: str) -> tuple[np.ndarray, str]:
    """The array of ``path`` and its layout: ``"CHW"`` (.npy), ``"HWC"`` (interleaved TIFF) or ``"either"`` (TIFF)."""
    try:
        if path.lower().endswith(TIFF_EXTENSIONS):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.asarray(), "HWC" if series.axes.endswith("S") else "either"
        return np.load(path, allow_pickle=False), "CHW"
    # numpy and tifffile report an empty, truncated or foreign file as any of these; KeyError is
    # tifffile's "requires the 'imagecodecs' package" for a compression it cannot decode alone.
    except (OSError, ValueError, EOFError, KeyError, IndexError, tifffile.TiffFileError) as err:
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err


def _bands_first(array: np.ndarray, layout: str, in_chans: int, path: str) -> np.ndarray:
    """(H, W), (C, H, W) or (H, W, C) -> (C, H, W); see the module's notes for which axis holds the bands."""
    if array.ndim == 2:  # one band, whatever in_chans says
        array, layout = array[None], "CHW"
    if array.ndim != 3:
        raise UnreadableImageError(path, f"shape {array.shape} is not (C, H, W), (H, W, C) or (H, W)")
    if array.dtype.kind not in "biuf":
        raise UnreadableImageError(path, f"dtype {array.dtype} is not a number type")
    if layout == "either":  # a TIFF that does not say: the end with in_chans entries, bands first on a tie
        first, last = array.shape[0], array.shape[-1]
        if in_chans not in (first, last):  # neither: name the shorter end as the band count in the message
            raise BandCountError(path, min(first, last), in_chans)
        layout = "CHW" if first == in_chans else "HWC"
    bands = array.shape[0] if layout == "CHW" else array.shape[-1]
    if bands != in_chans:
        raise BandCountError(path, bands, in_chans)
    return array if layout == "CHW" else array.transpose(2, 0, 1)


class NormalizeBands:
    """``(x - mean) / std`` per band of a (C, H, W) tensor, with statistics that are set after it is built.

    The DataModule learns its statistics when its first DataLoader is made (computed from the files,
    or restored from a checkpoint, which Lightning does after ``setup``): it sets them here, and the
    DataLoader workers, started after that, carry the set values.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        if mean is not None and std is not None:
            self.set(mean, std)

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (C, H, W) in the data's units -> (C, H, W) normalised."""
        if self.mean is None or self.std is None:
            raise RuntimeError("NormalizeBands has no statistics yet: the DataModule sets them before loading")
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        state = "unset" if self.mean is None else f"{self.mean.numel()} bands"
        return f"{type(self).__name__}({state})"


def pretrain_transform_array(
    img_size: tuple[int, int],
    normalize: NormalizeBands,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    horizontal_flip: bool = True,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """RandomResizedCrop (antialiased) + flip + per-band normalisation: (C, H, W) float -> (C, *img_size)."""
    steps = [v2.RandomResizedCrop(img_size, scale=crop_scale, interpolation=INTERPOLATIONS[interpolation])]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, normalize])


def finetune_transform_array(
    img_size: tuple[int, int],
    normalize: NormalizeBands,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    random_erasing: float = 0.25,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The fine-tuning augmentation without RandAugment (its colour operations need image values).

    RandomResizedCrop + flip, per-band normalisation, then RandomErasing with per-pixel normal noise
    in normalised units (timm's ``pixel`` mode), as for images.
    """
    steps = [
        v2.RandomResizedCrop(img_size, scale=crop_scale, interpolation=INTERPOLATIONS[interpolation]),
        v2.RandomHorizontalFlip(),
        normalize,
    ]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


def eval_transform_array(
    img_size: tuple[int, int], normalize: NormalizeBands, crop_ratio: float = 0.875, interpolation: str = "bilinear"
) -> v2.Compose:
    """Resize the shorter side to ``max(img_size) / crop_ratio``, centre-crop, normalise per band."""
    resize = int(max(img_size) / crop_ratio)
    return v2.Compose(
        [v2.Resize(resize, interpolation=INTERPOLATIONS[interpolation]), v2.CenterCrop(img_size), normalize]
    )


def band_statistics(dataset: Dataset, num_files: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-band mean and std over every pixel of ``num_files`` samples of ``dataset`` drawn by ``seed``.

    The samples are read untransformed (whole files, in their own units); unreadable ones are left out
    here (training skips and counts them). The per-file moments are merged exactly (Chan et al.), in
    float64. A band that is constant in the sample gets std 1, so normalising it cannot divide by zero.

    Args:
        dataset: items ``(tensor (C, H, W), target)``, whose reads raise ``UnreadableImageError`` for bad files.
        num_files: how many samples to draw (all of them when the dataset is smaller).
        seed: seed of the draw.

    Returns:
        ``(mean, std, files_read)``.

    Raises:
        RuntimeError: none of the drawn samples could be read.
    """
    size = len(dataset)  # type: ignore[arg-type]
    picked = np.sort(np.random.default_rng(seed).permutation(size)[: min(num_files, size)])
    moments, read, first_error = None, 0, None
    for index in picked.tolist():
        try:
            x = dataset[index][0].double().flatten(1)  # (C, H*W)
        except UnreadableImageError as err:
            first_error = first_error or err
            continue
        file_mean = x.mean(dim=1)
        file_moments = (x.shape[1], file_mean, ((x - file_mean[:, None]) ** 2).sum(dim=1))
        moments = file_moments if moments is None else _merge_moments(moments, file_moments)
        read += 1
    if moments is None:
        raise RuntimeError(f"none of the {len(picked)} files drawn for the band statistics can be read ({first_error})")
    count, mean, m2 = moments
    std = (m2 / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist()), read


def _merge_moments(a: tuple[int, Tensor, Tensor], b: tuple[int, Tensor, Tensor]) -> tuple[int, Tensor, Tensor]:
    """(count, mean (C,), sum of squared deviations (C,)) of two sets of pixels -> the same of their union."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    total, delta = n_a + n_b, mean_b - mean_a
    return total, mean_a + delta * (n_b / total), m2_a + m2_b + delta**2 * (n_a * n_b / total)
