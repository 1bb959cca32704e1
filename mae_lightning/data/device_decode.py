"""``decode: gpu``: JPEG decoding (nvJPEG, batched) and the crops on the training device, not in CPU workers.

The workers only read each file's bytes and draw its crop box and flip from the image size in the file's
header, with the random draws of the ``decode: tensor`` pipeline in its order, so the per-sample seeds give
the same crops either way. A file nvJPEG does not take (PNG, CMYK, ...) is decoded in the worker instead.
:func:`decode_batch` then decodes, crops, resizes and flips the batch on the device, before the copy; with
``device="cpu"`` the same code runs on the CPU, which is how the tests compare it with ``decode: tensor``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mae_lightning.data.datasets import UnreadableImageError
from mae_lightning.data.tensor_decode import ReadImageUint8, eval_transform_uint8

EVAL = -1  # the flip slot of an evaluation item: resize + centre crop instead of a random crop


class ReadBytes:
    """Loader: a file's bytes (a path is read; bytes, from shards, pass through)."""

    def __call__(self, path: str | bytes) -> bytes:
        if isinstance(path, bytes):
            return path
        with open(path, "rb") as f:
            return f.read()


class DeferredCrop:
    """Worker side: the file's bytes -> ``(payload, params)`` with params ``[top, left, height, width, flip]``.

    Args:
        img_size: the output size (H, W).
        in_chans: 1 or 3 (the decoded channels).
        crop_scale: RandomResizedCrop's scale range; None for evaluation (resize + centre crop on the device).
        horizontal_flip: draw a flip with probability 0.5 (training).
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        in_chans: int,
        crop_scale: tuple[float, float] | None = (0.2, 1.0),
        horizontal_flip: bool = True,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"decode: gpu decodes JPEGs to 1 or 3 channels, got in_chans={in_chans}")
        self.in_chans = in_chans
        self.crop = None if crop_scale is None else v2.RandomResizedCrop(img_size, scale=crop_scale)
        self.horizontal_flip = horizontal_flip
        self.fallback = ReadImageUint8(in_chans)

    def __call__(self, data: bytes) -> tuple[Tensor, Tensor]:
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
                is_plain_jpeg = header.format == "JPEG" and header.mode in ("L", "RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise UnreadableImageError("<image bytes>", f"{type(err).__name__}: {err}") from err
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if not is_plain_jpeg:
            payload = self.fallback(data)  # decoded here; cropped on the device with the others
        if self.crop is None:
            return payload, torch.tensor([0, 0, height, width, EVAL])
        # The draws of v2.RandomResizedCrop and v2.RandomHorizontalFlip, in their order.
        box = self.crop.make_params([torch.empty(1, height, width, dtype=torch.uint8)])
        flip = int(self.horizontal_flip and bool(torch.rand(1) < 0.5))
        return payload, torch.tensor([box["top"], box["left"], box["height"], box["width"], flip])


def collate_deferred(samples: Sequence[tuple[tuple[Tensor, Tensor], int]]):
    """[((payload, params), label)] -> ((list of payloads, (N, 5) params), (N,) labels)."""
    payloads = [payload for (payload, _), _ in samples]
    params = torch.stack([params for (_, params), _ in samples])
    return (payloads, params), default_collate([label for _, label in samples])


def is_deferred_batch(batch) -> bool:
    return isinstance(batch, list | tuple) and isinstance(batch[0], list | tuple) and isinstance(batch[0][0], list)


def decode_batch(
    payloads: list[Tensor], params: Tensor, img_size: tuple[int, int], in_chans: int, crop_ratio: float, device
) -> Tensor:
    """Decode (JPEGs in one batched call on ``device``), crop, resize and flip: -> (N, C, H, W) uint8 on ``device``."""
    mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
    encoded = [payload for payload in payloads if payload.dim() == 1]  # JPEG bytes; the others are decoded
    decoded = iter(decode_jpeg(encoded, mode=mode, device=device) if encoded else [])
    images = [next(decoded) if payload.dim() == 1 else payload.to(device) for payload in payloads]
    evaluation = eval_transform_uint8(img_size, crop_ratio)
    out = []
    for image, (top, left, height, width, flip) in zip(images, params.tolist(), strict=True):
        if flip == EVAL:
            out.append(evaluation(image))
            continue
        image = F.resized_crop(
            image, top, left, height, width, list(img_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )
        out.append(F.horizontal_flip(image) if flip else image)
    return torch.stack(out)
