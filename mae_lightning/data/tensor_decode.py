"""``decode: tensor``, a lighter data path for fast accelerators: decode to uint8 tensors, normalise on the device.

The workers decode with torchvision.io (libjpeg-turbo) and crop and flip uint8 tensors; the batch crosses
to the device as uint8 (a quarter of the bytes of float32) and is normalised there (:func:`normalize_uint8`).
The fine-tuning augmentation is the exception: its random erasing fills with normal noise in normalised
units, so :func:`finetune_transform_uint8` normalises in the workers and its batches cross as floats.

torchvision 0.29 marks its decoders as superseded by TorchCodec; they remain in the 0.29 line
this project pins, and this module is the one place to change when moving to TorchCodec.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from mae_lightning.data.datasets import UnreadableImageError, _name, warn_8_bits

_READ_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB, 4: ImageReadMode.RGB_ALPHA}


class ReadImageUint8:
    """Loader: an image file to a (in_chans, H, W) uint8 tensor, converting the channel count on decode.

    16-bit images keep their top 8 bits, as :func:`~mae_lightning.data.datasets.load_image` keeps them (the same
    values, the same warning, once).
    """

    def __init__(self, in_chans: int) -> None:
        if in_chans not in _READ_MODES:
            raise ValueError(
                f"image files can be decoded to 1, 3 or 4 channels, got in_chans={in_chans}; other band counts "
                "are read from arrays (.npy, multi-band .tif)"
            )
        self.mode = _READ_MODES[in_chans]
        self.warned = False

    def __call__(self, path: str | bytes) -> Tensor:
        """``path``: an image file, or the file's bytes."""
        source = torch.frombuffer(bytearray(path), dtype=torch.uint8) if isinstance(path, bytes) else path
        try:
            image = decode_image(source, mode=self.mode)
        except (RuntimeError, ValueError) as err:  # torchvision's report of an empty or corrupt file
            raise UnreadableImageError(_name(path), f"{type(err).__name__}: {err}") from err
        if image.dtype == torch.uint16:
            if not self.warned:
                self.warned = True
                warn_8_bits(path)
            # torch shifts no uint16
            image = (image.to(torch.int32) >> 8).to(torch.uint8)
        return image


def pretrain_transform_uint8(
    img_size: tuple[int, int], crop_scale: tuple[float, float] = (0.2, 1.0), horizontal_flip: bool = True
) -> v2.Compose:
    """RandomResizedCrop (bicubic, antialiased) and flip on uint8 tensors; no normalisation here."""
    steps = [v2.RandomResizedCrop(img_size, scale=crop_scale, interpolation=v2.InterpolationMode.BICUBIC)]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def finetune_transform_uint8(
    img_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.08, 1.0),
    rand_augment: tuple[int, int] = (2, 9),
    random_erasing: float = 0.25,
) -> v2.Compose:
    """The steps of :func:`~mae_lightning.data.transforms.finetune_transform`: (C, H, W) uint8 -> (C, *img_size) float.

    torchvision warps tensors with nearest or bilinear sampling only, so RandAugment's shears, translations and
    rotations are bilinear here (bicubic on PIL). C is 1 or 3 (RandAugment's colour operations need it).
    """
    num_ops, magnitude = rand_augment
    steps = [
        v2.RandomResizedCrop(img_size, scale=crop_scale, interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
    ]
    if num_ops > 0:
        steps.append(v2.RandAugment(num_ops, magnitude, interpolation=v2.InterpolationMode.BILINEAR))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


def eval_transform_uint8(img_size: tuple[int, int], crop_ratio: float = 0.875) -> v2.Compose:
    """Resize the shorter side to ``max(img_size) / crop_ratio`` and centre-crop, on uint8 tensors."""
    resize = int(max(img_size) / crop_ratio)
    return v2.Compose([v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(img_size)])


def normalize_uint8(imgs: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """imgs: (N, C, H, W) uint8 on any device -> float32 ``(imgs / 255 - mean) / std``, computed there."""
    mean_t = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    return (imgs.float().div_(255.0) - mean_t) / std_t
