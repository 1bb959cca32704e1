"""How a sample travels from a file to a normalised batch on the device: one pipeline per (file kind, decode mode).

A DataModule picks its pipeline from what its samples are (:attr:`MAEDataModule.file_kind`) and where images
are decoded (:attr:`MAEDataModule.decode`), and delegates to it every step below. The pipelines hold no state:
each call reads the settings of the DataModule it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mae_lightning.data.arrays import (
    ReadArray,
    eval_transform_array,
    finetune_transform_array,
    pretrain_transform_array,
)
from mae_lightning.data.datasets import ReadImage
from mae_lightning.data.device_decode import DeferredCrop, ReadBytes, collate_deferred, decode_batch, is_deferred_batch
from mae_lightning.data.tensor_decode import (
    ReadImageUint8,
    eval_transform_uint8,
    finetune_transform_uint8,
    normalize_uint8,
    pretrain_transform_uint8,
)
from mae_lightning.data.transforms import eval_transform, finetune_transform, pretrain_transform

if TYPE_CHECKING:
    from mae_lightning.data.base import MAEDataModule


class Pipeline:
    """The path of one kind of sample; the base leaves batches as the workers made them."""

    # Batches samples the default way (None) or with a function of the list of samples.
    collate_fn: Callable | None = None

    def check(self, data: MAEDataModule) -> None:
        """Raise ValueError, in one line, when ``data``'s settings or machine cannot use this pipeline."""

    def loader(self, data: MAEDataModule) -> Callable:
        """Reads one file (a path, or its bytes from shards) into what :meth:`transforms` take."""
        raise NotImplementedError

    def check_reader(self, loader: Callable, data: MAEDataModule) -> Callable:
        """Reads a file with ``loader`` as far as a worker does before a bad file shows (when a folder is made)."""
        return loader

    def transforms(self, data: MAEDataModule) -> tuple[Callable, Callable]:
        """(train, eval) transforms of a loaded sample, run in the DataLoader workers."""
        raise NotImplementedError

    def before_transfer(self, batch, data: MAEDataModule):
        """The batch before it is copied to the device."""
        return batch

    def on_device(self, batch, data: MAEDataModule):
        """The batch after the copy to the device."""
        return batch


class PILImages(Pipeline):
    """``decode: pil``: decode, augment and normalise with PIL in the workers (``data/transforms.py``)."""

    def loader(self, data: MAEDataModule) -> Callable:
        return ReadImage()

    def transforms(self, data: MAEDataModule) -> tuple[Callable, Callable]:
        if data.augmentation == "finetune":
            train = finetune_transform(
                data.img_size, data.in_chans, data.mean, data.std, data.crop_scale, data.rand_augment,
                data.random_erasing,
            )  # fmt: skip
        else:
            train = pretrain_transform(
                data.img_size, data.in_chans, data.mean, data.std, data.crop_scale, data.horizontal_flip
            )
        return train, eval_transform(data.img_size, data.in_chans, data.mean, data.std, data.eval_crop_ratio)


class TensorImages(Pipeline):
    """``decode: tensor`` (``data/tensor_decode.py``): uint8 batches normalised on the device; fine-tuning's come
    normalised from the workers and are left alone."""

    def loader(self, data: MAEDataModule) -> Callable:
        return ReadImageUint8(data.in_chans)

    def transforms(self, data: MAEDataModule) -> tuple[Callable, Callable]:
        if data.augmentation == "finetune":
            train = finetune_transform_uint8(
                data.img_size, data.mean, data.std, data.crop_scale, data.rand_augment, data.random_erasing
            )
        else:
            train = pretrain_transform_uint8(data.img_size, data.crop_scale, data.horizontal_flip)
        return train, eval_transform_uint8(data.img_size, data.eval_crop_ratio)

    def on_device(self, batch, data: MAEDataModule):
        if isinstance(batch, list | tuple) and isinstance(batch[0], torch.Tensor) and batch[0].dtype == torch.uint8:
            return (normalize_uint8(batch[0], data.mean, data.std), *batch[1:])
        return batch


class DeviceDecodedImages(TensorImages):
    """``decode: gpu``: the workers read the bytes and draw the crops; nvJPEG decodes each batch and the crops run on
    the device, before the copy; then normalised as ``decode: tensor`` (``data/device_decode.py``)."""

    collate_fn = staticmethod(collate_deferred)

    def check(self, data: MAEDataModule) -> None:
        if not torch.cuda.is_available():
            raise ValueError("decode: gpu decodes JPEGs with nvJPEG on a CUDA GPU, and none is visible: use tensor")
        if data.augmentation == "finetune":
            raise ValueError("decode: gpu does the pretraining crop and flip; fine-tuning augments on the CPU")

    def loader(self, data: MAEDataModule) -> Callable:
        return ReadBytes()

    def check_reader(self, loader: Callable, data: MAEDataModule) -> Callable:
        # The loader only reads bytes; reading the image header, in the transform, is what can fail.
        transform = data.eval_transform
        return lambda path: transform(loader(path))

    def transforms(self, data: MAEDataModule) -> tuple[Callable, Callable]:
        train = DeferredCrop(data.img_size, data.in_chans, data.crop_scale, data.horizontal_flip)
        return train, DeferredCrop(data.img_size, data.in_chans, crop_scale=None)

    def before_transfer(self, batch, data: MAEDataModule):
        if not is_deferred_batch(batch):  # made by another loader than this DataModule's
            return batch
        (payloads, params), labels = batch
        device = data.trainer.strategy.root_device
        return decode_batch(payloads, params, data.img_size, data.in_chans, data.eval_crop_ratio, device), labels


class Arrays(Pipeline):
    """Arrays of any band count in their own units (``data/arrays.py``), normalised per band in the workers with the
    DataModule's :class:`~mae_lightning.data.statistics.NormalizeBands`, whatever the decode mode."""

    def loader(self, data: MAEDataModule) -> Callable:
        return ReadArray(data.in_chans)

    def transforms(self, data: MAEDataModule) -> tuple[Callable, Callable]:
        normalize, interpolation = data.normalize_bands, data.array_interpolation
        if data.augmentation == "finetune":
            train = finetune_transform_array(
                data.img_size, normalize, data.crop_scale, data.random_erasing, interpolation
            )
        else:
            train = pretrain_transform_array(
                data.img_size, normalize, data.crop_scale, data.horizontal_flip, interpolation
            )
        return train, eval_transform_array(data.img_size, normalize, data.eval_crop_ratio, interpolation)


IMAGE_PIPELINES: dict[str, Pipeline] = {"pil": PILImages(), "tensor": TensorImages(), "gpu": DeviceDecodedImages()}
ARRAYS = Arrays()


def pipeline_for(file_kind: str | None, decode: str) -> Pipeline:
    """The pipeline of ``file_kind`` ("image" or "array") samples read in ``decode`` mode ("pil", "tensor", "gpu")."""
    return ARRAYS if file_kind == "array" else IMAGE_PIPELINES[decode]
