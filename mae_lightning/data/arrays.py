"""Arrays of any band count on disk (multispectral, hyperspectral, SAR, ...): reading and transforms.

Three file kinds are read, each as a (C, H, W) float32 tensor in the file's own units (no /255):

- ``.npy`` files shaped (C, H, W) (numpy's own format, no pickled objects);
- ``.tif`` / ``.tiff`` files, read with ``tifffile``: bands first (C, H, W), as band-separate (planar)
  GeoTIFFs are read, or bands last (H, W, C), as pixel-interleaved ones are. A file that marks its last axis
  as interleaved samples is (H, W, C); otherwise the bands are the end of the shape with ``in_chans``
  entries, the first one when both ends have. Compressed TIFFs other than deflate (LZW, JPEG, ...) need
  the ``imagecodecs`` package, which tifffile names when it is missing;
- ``.png`` files, when a folder is read with ``file_kind: array``: 16-bit PNGs (microscopy, depth) keep
  their full range instead of the 8 bits an image file is reduced to.

A 2-D file is one band. A bad file (see :class:`ReadArray`) is skipped and counted like a bad image. The crops
and flips are torchvision's v2 transforms, which act on (C, H, W) tensors of any C.
"""

from __future__ import annotations

import numpy as np
import tifffile
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from mae_lightning.data.datasets import UnreadableImageError
from mae_lightning.data.statistics import NormalizeBands

TIFF_EXTENSIONS = (".tif", ".tiff")
ARRAY_EXTENSIONS = (".npy", *TIFF_EXTENSIONS)
# Image files that are also read as arrays when a folder says so (file_kind: array): their full 16-bit range.
PNG_EXTENSIONS = (".png",)
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
    """The array of ``path`` and its layout: ``"CHW"`` (.npy, .png), ``"HWC"`` (interleaved TIFF), ``"either"``."""
    try:
        if path.lower().endswith(PNG_EXTENSIONS):
            # torchvision keeps 16 bits per channel (PIL reduces 16-bit colour PNGs to 8).
            return decode_image(path, mode=ImageReadMode.UNCHANGED).numpy(), "CHW"
        if path.lower().endswith(TIFF_EXTENSIONS):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.asarray(), "HWC" if series.axes.endswith("S") else "either"
        return np.load(path, allow_pickle=False), "CHW"
    # numpy and tifffile report an empty, truncated or foreign file as any of these; KeyError is
    # tifffile's "requires the 'imagecodecs' package" for a compression it cannot decode alone.
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, IndexError, tifffile.TiffFileError) as err:
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
    """The fine-tuning augmentation without RandAugment (its colour operations need image values); random
    erasing fills with per-pixel normal noise in normalised units (timm's ``pixel`` mode), as for images."""
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
