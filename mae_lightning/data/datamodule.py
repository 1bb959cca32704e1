"""LightningDataModules: one base that owns transforms, statistics and loaders, one small subclass per source."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets

from mae_lightning.data.arrays import (
    INTERPOLATIONS,
    BandCountError,
    NormalizeBands,
    ReadArray,
    band_statistics,
    eval_transform_array,
    finetune_transform_array,
    pretrain_transform_array,
)
from mae_lightning.data.datasets import Digits, FileList, SkipUnreadable, UnreadableImageError, load_image
from mae_lightning.data.device_decode import DeferredCrop, ReadBytes, collate_deferred, decode_batch, is_deferred_batch
from mae_lightning.data.folders import FILE_KINDS, FolderFiles, file_kind, list_folder, split_by_fraction
from mae_lightning.data.resumable import PerSampleSeeds, ResumableDataLoader, ResumableSampler
from mae_lightning.data.tensor_decode import (
    ReadImageUint8,
    eval_transform_uint8,
    finetune_transform_uint8,
    normalize_uint8,
    pretrain_transform_uint8,
)
from mae_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ToChannels,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)


class MAEDataModule(LightningDataModule):
    """Base DataModule: MAE augmentation for training, resize + centre crop for evaluation.

    ``img_size`` and ``in_chans`` are stated here once; the CLI links them into the model.
    Batches are ``(images, targets)`` with images (N, in_chans, H, W); unlabelled data has target -1.
    Subclasses implement :meth:`build_dataset`; what its samples are is :attr:`file_kind`.

    Image data (PIL images) go through the pipelines of ``data/transforms.py`` and are normalised with
    ``mean``/``std`` or the class's defaults. Array data (float tensors of any band count in their own
    units, ``data/arrays.py``) are cropped and flipped as tensors and normalised per band with
    ``mean``/``std`` when given, else with statistics taken, when the first DataLoader is made, from
    the checkpoint being restored, from the module's ``pretrained`` (or ``init_weights``) checkpoint
    when it holds them (so a probe or fine-tuning normalises as its pretraining did), or computed from
    ``stats_files`` training files drawn by ``seed``. They are logged once and stored with checkpoints
    (:meth:`state_dict`).

    Args:
        img_size: side of the (square) crop, or (height, width).
        in_chans: channels the model expects; every image is converted to it, every array must have it.
        batch_size: images per device and step.
        num_workers: DataLoader worker processes per device.
        pin_memory: page-locked host memory for faster copies to a GPU.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        crop_scale: area range of RandomResizedCrop; the paper uses (0.2, 1.0).
        horizontal_flip: random horizontal flips in training.
        eval_crop_ratio: evaluation resizes the shorter side to ``img_size / eval_crop_ratio``
            and centre-crops (224/256 = 0.875 on ImageNet; 1.0 keeps the whole image).
        mean: per-channel normalisation mean; defaults to the dataset's (images) or to the data's own
            per-band statistics (arrays, see above).
        std: per-channel normalisation std; defaults as ``mean``.
        seed: seed of the data order and the augmentations; defaults to ``seed_everything``'s (or 0).
            Stored in checkpoints, so a resumed run reads the same images in the same order.
        max_bad_image_fraction: share of unreadable files (images: empty, truncated, not images; arrays:
            also a wrong shape or NaN/inf values) that are skipped with a warning; past it the run stops. In [0, 1].
        augmentation: ``"pretrain"`` (crop + flip, MAE pretraining and linear probing) or ``"finetune"``
            (crop + flip + RandAugment + random erasing, the fine-tuning recipe).
        rand_augment: RandAugment (num_ops, magnitude) of the ``"finetune"`` augmentation (images only).
        random_erasing: probability of RandomErasing in the ``"finetune"`` augmentation.
    """

    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD
    # What build_dataset's samples are: "image" (PIL images) or "array" (float (C, H, W) tensors);
    # None in a subclass that decides it from the files it finds, in its __init__.
    file_kind: str | None = "image"
    # Image files: "pil" (decode, augment, normalise in the workers), "tensor" (torchvision.io decoding,
    # uint8 augmentation in the workers, normalised on the device) or "gpu" (the workers read bytes and draw
    # the crops; nvJPEG decodes and crops on the device: data/device_decode.py). Set with set_decode.
    decode: str = "pil"
    # Array data: how many training files the per-band statistics are computed from, and the resampling
    # of crops and resizes ("bilinear" never leaves the range of the input values; "bicubic").
    stats_files: int = 256
    array_interpolation: str = "bilinear"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        horizontal_flip: bool = True,
        eval_crop_ratio: float = 0.875,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int | None = None,
        max_bad_image_fraction: float = 0.01,
        augmentation: str = "pretrain",
        rand_augment: tuple[int, int] = (2, 9),
        random_erasing: float = 0.25,
    ) -> None:
        super().__init__()
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if min(self.img_size) <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if not 0 < eval_crop_ratio <= 1:
            raise ValueError(f"eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
        if not 0 <= max_bad_image_fraction <= 1:
            raise ValueError(f"max_bad_image_fraction must be in [0, 1], got {max_bad_image_fraction}")
        if augmentation not in ("pretrain", "finetune"):
            raise ValueError(f"augmentation must be 'pretrain' or 'finetune', got {augmentation!r}")
        if augmentation == "finetune" and not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing}")
        if augmentation == "finetune" and rand_augment[0] > 0 and in_chans not in (1, 3):
            raise ValueError(
                f"RandAugment's colour operations take 1 or 3 channels, got in_chans={in_chans}; "
                "set rand_augment: [0, 0] to fine-tune without it"
            )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.max_bad_image_fraction = max_bad_image_fraction
        self._resume_state: dict[str, int] | None = None
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.crop_scale = tuple(crop_scale)
        self.horizontal_flip = horizontal_flip
        self.eval_crop_ratio = eval_crop_ratio
        self.augmentation = augmentation
        self.rand_augment = tuple(rand_augment)
        self.random_erasing = random_erasing
        # The one normalisation of array data, shared by its train and eval pipelines (see NormalizeBands).
        self._normalize_bands = NormalizeBands()
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._stats_given = mean is not None
        if mean is not None and std is not None:
            self._set_stats(mean, std)
        if self.file_kind == "image":
            self._use_image_defaults()
        self._transforms: tuple[Callable, Callable] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _use_image_defaults(self) -> None:
        """Image files: check that ``in_chans`` is a channel count they convert to; default statistics."""
        ToChannels(self.in_chans)  # raises for a count PIL cannot convert an image to
        if self.mean is None:
            self.mean = self._default_stats(self.default_mean, self.in_chans)
            self.std = self._default_stats(self.default_std, self.in_chans)

    @staticmethod
    def _default_stats(stats: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
        # Grayscale takes the mean of the colour statistics; other counts repeat it per band.
        if len(stats) == in_chans:
            return tuple(stats)
        return (sum(stats) / len(stats),) * in_chans

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        """The dataset of ``split`` ("train" or "val") with ``transform`` applied, or None if there is none."""
        raise NotImplementedError

    def set_decode(self, decode: str) -> None:
        """Check and set :attr:`decode` (subclasses that read image files call this)."""
        if decode not in ("pil", "tensor", "gpu"):
            raise ValueError(f"decode must be 'pil', 'tensor' or 'gpu', got {decode!r}")
        if decode == "gpu":
            if not torch.cuda.is_available():
                raise ValueError("decode: gpu decodes JPEGs with nvJPEG on a CUDA GPU, and none is visible: use tensor")
            if self.augmentation == "finetune":
                raise ValueError("decode: gpu does the pretraining crop and flip; fine-tuning augments on the CPU")
        self.decode = decode

    def image_loader(self) -> Callable:
        """Reads an image file (a path, or its bytes) as the decode mode needs it."""
        if self.decode == "gpu":
            return ReadBytes()
        return ReadImageUint8(self.in_chans) if self.decode == "tensor" else load_image

    # ------------------------------------------------------------------ transforms
    @property
    def train_transform(self) -> Callable:
        """The training transform, built on first use (a subclass learns its file kind in its ``__init__``)."""
        return self._built_transforms()[0]

    @property
    def eval_transform(self) -> Callable:
        """The evaluation transform (resize, centre crop, normalise)."""
        return self._built_transforms()[1]

    def _built_transforms(self) -> tuple[Callable, Callable]:
        if self._transforms is None:
            self._transforms = self.build_transforms()
        return self._transforms

    def build_transforms(self) -> tuple[Callable, Callable]:
        """(train, eval) transforms of the samples of :meth:`build_dataset`, by :attr:`file_kind` and :attr:`decode`."""
        if self.file_kind == "array":
            return self._array_transforms()
        if self.decode == "tensor":
            return self._uint8_transforms()
        if self.decode == "gpu":
            train = DeferredCrop(self.img_size, self.in_chans, self.crop_scale, self.horizontal_flip)
            return train, DeferredCrop(self.img_size, self.in_chans, crop_scale=None)
        if self.augmentation == "finetune":
            train = finetune_transform(
                self.img_size, self.in_chans, self.mean, self.std, self.crop_scale, self.rand_augment,
                self.random_erasing,
            )  # fmt: skip
        else:
            train = pretrain_transform(
                self.img_size, self.in_chans, self.mean, self.std, self.crop_scale, self.horizontal_flip
            )
        return train, eval_transform(self.img_size, self.in_chans, self.mean, self.std, self.eval_crop_ratio)

    def _uint8_transforms(self) -> tuple[Callable, Callable]:
        if self.augmentation == "finetune":
            train = finetune_transform_uint8(
                self.img_size, self.mean, self.std, self.crop_scale, self.rand_augment, self.random_erasing
            )
        else:
            train = pretrain_transform_uint8(self.img_size, self.crop_scale, self.horizontal_flip)
        return train, eval_transform_uint8(self.img_size, self.eval_crop_ratio)

    @property
    def collate_fn(self) -> Callable | None:
        return collate_deferred if self.decode == "gpu" and self.file_kind == "image" else None

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if is_deferred_batch(batch):  # decode: gpu
            (payloads, params), labels = batch
            device = self.trainer.strategy.root_device
            imgs = decode_batch(payloads, params, self.img_size, self.in_chans, self.eval_crop_ratio, device)
            return imgs, labels
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # decode: tensor batches cross as uint8 and are normalised here, on the device; fine-tuning batches
        # come normalised from the workers (random erasing's noise is in normalised units).
        if isinstance(batch, list | tuple) and isinstance(batch[0], torch.Tensor) and batch[0].dtype == torch.uint8:
            return (normalize_uint8(batch[0], self.mean, self.std), *batch[1:])
        return batch

    def _array_transforms(self) -> tuple[Callable, Callable]:
        normalize, interpolation = self._normalize_bands, self.array_interpolation
        if self.augmentation == "finetune":
            train = finetune_transform_array(
                self.img_size, normalize, self.crop_scale, self.random_erasing, interpolation
            )
        else:
            train = pretrain_transform_array(
                self.img_size, normalize, self.crop_scale, self.horizontal_flip, interpolation
            )
        return train, eval_transform_array(self.img_size, normalize, self.eval_crop_ratio, interpolation)

    # ------------------------------------------------------------------ per-band statistics
    def _set_stats(self, mean: Sequence[float], std: Sequence[float], source: str | None = None) -> None:
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"mean and std need in_chans={self.in_chans} values, got mean={mean}, std={std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._normalize_bands.set(self.mean, self.std)
        if source is not None:
            rank_zero_info(f"data: per-band mean {_short(self.mean)} and std {_short(self.std)}, {source}")

    def resolve_statistics(self) -> None:
        """Give array data its per-band mean and std, if it has none yet (see the class notes).

        Called when a DataLoader is made: after Lightning has restored a checkpoint's (which it does
        after ``setup``), before any worker starts. A script that reads the datasets directly calls it.
        """
        if self.file_kind != "array" or self.mean is not None:
            return
        stored = self._statistics_of_weights()
        if stored is not None:
            mean, std, path = stored
            self._set_stats(mean, std, f"as stored in {path}")
            return
        train = self.build_dataset("train", None)
        if isinstance(train, SkipUnreadable):  # read the files themselves: its replacements would repeat files
            train = train.dataset
        mean, std, read = band_statistics(train, self.stats_files, self.seed)
        self._set_stats(mean, std, f"computed from {read} training files drawn with seed {self.seed}")

    def _statistics_of_weights(self) -> tuple[list[float], list[float], str] | None:
        """Statistics stored in the checkpoint the module starts from (``pretrained`` / ``init_weights``)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        for name in ("pretrained", "init_weights"):
            path = getattr(module, name, None)
            if isinstance(path, str | Path) and Path(path).is_file():
                stats = _statistics_in_checkpoint(Path(path), type(self).__qualname__, self.in_chans)
                if stats is not None:
                    return (*stats, str(path))
        return None

    # ------------------------------------------------------------------ stages and loaders
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self.build_dataset("train", self.train_transform)
            if len(self.train_set) < self.batch_size:
                raise ValueError(
                    f"the training set has {len(self.train_set)} images, fewer than batch_size={self.batch_size}; "
                    "every batch would be dropped"
                )
        if self.val_set is None:
            self.val_set = self.build_dataset("val", self.eval_transform)

    def _loader(self, dataset: Dataset | None, train: bool, sampler: Sampler | None = None):
        if dataset is None:
            return []
        self.resolve_statistics()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train if sampler is None else None,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            # Pinned memory only speeds up copies to an accelerator; on a CPU-only machine it just warns.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate_fn,
            # Workers' base seeds from the loader's own generator: the global state (masking) is left alone.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), augmented per sample, resumable mid-epoch (see ``data/resumable.py``)."""
        if self.train_set is None:
            return []
        self.resolve_statistics()
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=self.seed,
            # Shards are read a few at a time (see ResumableSampler); files and arrays from anywhere.
            groups=getattr(self.train_set, "shard_sizes", None),
        )
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        loader = ResumableDataLoader(
            PerSampleSeeds(self.train_set, self.seed),
            sampler,
            position=self.state_dict,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The data seed, the epoch and batches of it already trained on (under a trainer), and the statistics."""
        state: dict[str, Any] = {"seed": self.seed, "epoch": 0, "batches_done": 0}
        if self.mean is not None:
            state.update(mean=list(self.mean), std=list(self.std))
        trainer = self.trainer
        if trainer is None or trainer.num_training_batches in (0, float("inf")):
            return state
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # a finished epoch: resume at the start of the next
            epoch, done = epoch + 1, 0
        return {**state, "epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict["seed"]
        self._resume_state = {key: state_dict[key] for key in ("seed", "epoch", "batches_done")}
        # Array statistics that were not given: the ones the checkpoint's model was trained with.
        if self.file_kind == "array" and not self._stats_given and "mean" in state_dict:
            self._set_stats(state_dict["mean"], state_dict["std"], "restored from the checkpoint")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or self.val_set is None:
            return self._loader(self.val_set, train=False)
        # Lightning's own predict sampler gives the processes shares that differ by one sample, hence
        # sometimes by one batch: under FSDP, whose every forward needs all processes, the longer share
        # would wait forever. Padded as in validation; the embedding writer keeps each index once.
        sampler = DistributedSampler(
            self.val_set, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
        return self._loader(self.val_set, train=False, sampler=sampler)


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _statistics_in_checkpoint(path: Path, key: str, in_chans: int) -> tuple[list[float], list[float]] | None:
    """The ``mean``/``std`` a DataModule stored in a Lightning checkpoint (under ``key``, else any), or None."""
    try:
        # mmap: only the few bytes of the DataModule's state are read, not the weights.
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, EOFError):
        return None  # not a Lightning checkpoint (an official .pth, say): it stores no data statistics
    if not isinstance(checkpoint, dict):
        return None
    candidates = [checkpoint.get(key)] + [v for k, v in checkpoint.items() if k != key]
    for state in candidates:
        if isinstance(state, dict) and {"mean", "std", "batches_done"} <= state.keys():
            mean, std = state["mean"], state["std"]
            if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == in_chans:
                return mean, std
    return None


class DigitsDataModule(MAEDataModule):
    """scikit-learn's 8x8 handwritten digits, bundled offline (see :class:`Digits`); 1 channel by default."""

    default_mean = (0.3052,)  # of the 1,500 training images, pixels scaled to 0..1
    default_std = (0.3749,)

    def __init__(self, img_size: int | tuple[int, int] = 32, in_chans: int = 1, **kwargs) -> None:
        super().__init__(img_size=img_size, in_chans=in_chans, **kwargs)

    def build_dataset(self, split: str, transform: Callable) -> Dataset:
        return Digits(split, transform)


class ImageFolderDataModule(MAEDataModule):
    """Images or arrays on disk: ImageNet-style ``root/<split_dir>/<class>/*`` or a flat folder.

    When ``root/<train_dir>`` exists it is the training set and ``root/<val_dir>`` (if present)
    the validation set; each is read with class sub-folders as labels when it has them, and as
    unlabelled files (target -1) otherwise. When ``root/<train_dir>`` does not exist, all of
    ``root`` is the training set and there is no validation, unless ``val_fraction`` cuts one out.

    The files are image files (.jpg, .png, ..., read as 1, 3 or 4 channels) or arrays of any band
    count (``.npy`` shaped (C, H, W), multi-band ``.tif``/``.tiff``; see ``data/arrays.py``), decided
    from the files found: a folder of both stops. Arrays keep their own units and are normalised per
    band (see :class:`MAEDataModule`). The folders are listed, and the first file of each read, when
    the DataModule is made, so an empty folder, unreadable data or a wrong ``in_chans`` stop the run
    before it starts, in one line.

    Args:
        root: the dataset folder.
        train_dir: training sub-folder.
        val_dir: validation sub-folder ("val" for ImageNet, "test" for the CIFAR-10 JPEG folders).
        decode: image files only. ``"pil"`` decodes, augments and normalises in the DataLoader workers;
            ``"tensor"`` decodes with torchvision.io and augments uint8 tensors in the workers, and converts
            to normalised floats on the training device (less CPU per image, a quarter of the
            bytes to copy: the path for fast GPUs; see benchmarks/RESULTS.md). With
            ``augmentation: finetune`` the workers also normalise, for random erasing's noise, and
            the training batches cross as floats. ``"gpu"`` (pretraining, a CUDA GPU): the workers read
            the bytes and draw the crops, nvJPEG decodes each batch on the GPU and the crops run there
            (``data/device_decode.py``); refused without a GPU.
        val_fraction: validate on this share of the training folder (``root/<train_dir>``, or ``root``),
            drawn by ``seed`` from each class separately (stratified; from all files when unlabelled),
            the rest training. None: ``root/<val_dir>`` validates, if it exists.
        file_kind: None decides from the files: ``.npy`` are arrays, other image suffixes images, and
            TIFF files go with the files beside them (arrays when alone). ``"image"`` reads TIFF files
            with PIL (8-bit RGB TIFFs, say), ``"array"`` with tifffile.
        array_interpolation: resampling of the crops and resizes of arrays, antialiased: ``"bilinear"``
            (never leaves the range of the input values) or ``"bicubic"``.
        stats_files: arrays without ``mean``/``std``: how many training files, drawn by ``seed``, the
            per-band mean and std are computed from.
        **kwargs: the :class:`MAEDataModule` arguments.
    """

    file_kind = None  # decided from the files found

    def __init__(
        self,
        root: str | Path,
        train_dir: str = "train",
        val_dir: str = "val",
        decode: str = "pil",
        val_fraction: float | None = None,
        file_kind: str | None = None,
        array_interpolation: str = "bilinear",
        stats_files: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} does not exist or is not a folder")
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1) or null, got {val_fraction}")
        if file_kind not in (None, *FILE_KINDS):
            raise ValueError(f"file_kind must be null, 'image' or 'array', got {file_kind!r}")
        if array_interpolation not in INTERPOLATIONS:
            raise ValueError(f"array_interpolation must be 'bilinear' or 'bicubic', got {array_interpolation!r}")
        if stats_files < 1:
            raise ValueError(f"stats_files must be >= 1, got {stats_files}")
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.set_decode(decode)
        self.val_fraction = val_fraction
        self.array_interpolation = array_interpolation
        self.stats_files = stats_files
        self._folders = self._list_folders()
        self.file_kind = _file_kind_of(self._folders, self.root, file_kind)
        self._check_channels()
        self.loader = self._make_loader()
        for folder in self._folders.values():
            if folder is not None:
                self._check_readable(folder)
        self._files = self._split()

    def _list_folders(self) -> dict[str, FolderFiles | None]:
        """The training and validation folders' files, before any ``val_fraction`` split."""
        train_root, val_root = self.root / self.train_dir, self.root / self.val_dir
        if self.val_fraction is not None and val_root.is_dir():
            raise ValueError(
                f"data.init_args.val_fraction={self.val_fraction} splits one folder, but {str(val_root)!r} "
                "exists: validate on it (val_fraction: null) or move it away"
            )
        return {
            "train": list_folder(train_root if train_root.is_dir() else self.root),
            "val": list_folder(val_root) if val_root.is_dir() else None,
        }

    def _check_channels(self) -> None:
        if self.file_kind == "array":
            if self.augmentation == "finetune" and self.rand_augment[0] > 0:
                raise ValueError(
                    f"RandAugment's colour operations need image values, and {str(self.root)!r} holds arrays: "
                    "set data.init_args.rand_augment: [0, 0]"
                )
            return
        if self.in_chans not in (1, 3, 4):
            raise ValueError(
                f"image files can be read as 1, 3 or 4 channels, got in_chans={self.in_chans} for the images under "
                f"{str(self.root)!r} (data.init_args.in_chans); for other band counts store the bands as arrays: "
                ".npy files shaped (C, H, W) or multi-band .tif files, which this DataModule reads with any in_chans"
            )
        self._use_image_defaults()

    def _make_loader(self) -> Callable:
        if self.file_kind == "array":
            return ReadArray(self.in_chans)
        return self.image_loader()

    def _check_readable(self, folder: FolderFiles) -> None:
        """Read files of ``folder`` in order up to the first good one: it must have ``in_chans`` bands."""
        first_error = None
        # decode: gpu reads bytes only; its workers' first step (reading the image header) is what can fail.
        read = self.loader if self.collate_fn is None else (lambda path: self.eval_transform(self.loader(path)))
        for path, _ in folder.samples:
            try:
                read(path)
                return
            except BandCountError as err:
                raise ValueError(
                    f"{path} has {err.bands} bands, but data.init_args.in_chans={self.in_chans}: set in_chans "
                    f"to the band count of the arrays under {str(folder.root)!r}"
                ) from None
            except UnreadableImageError as err:
                first_error = first_error or err
        raise ValueError(
            f"none of the {len(folder.samples)} {self.file_kind} files under {str(folder.root)!r} can be read "
            f"(first: {first_error}): fix them, or point data.init_args.root at readable data"
        )

    def _split(self) -> dict[str, FolderFiles | None]:
        """The training and validation files: the folders', or the training folder's cut by ``val_fraction``."""
        self._split_seed = self.seed
        if self.val_fraction is None:
            return dict(self._folders)
        train, val = split_by_fraction(self._folders["train"], self.val_fraction, self.seed)
        return {"train": train, "val": val}

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        files = self._files["train" if split == "train" else "val"]
        if files is None:
            return None
        dataset = FileList(files.samples, files.classes, self.loader, transform)
        return SkipUnreadable(dataset, self.max_bad_image_fraction, kind=self.file_kind)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.val_fraction is not None and self.seed != self._split_seed:
            # The checkpoint's seed drew the split of the run being continued: draw that one again.
            self._files = self._split()
            if self.train_set is not None:
                self.train_set = self.build_dataset("train", self.train_transform)
            if self.val_set is not None:
                self.val_set = self.build_dataset("val", self.eval_transform)


def _file_kind_of(folders: dict[str, FolderFiles | None], root: Path, forced: str | None) -> str:
    """What the files of the training and validation folders are, together (see :func:`file_kind`)."""
    paths = [path for folder in folders.values() if folder is not None for path, _ in folder.samples]
    return file_kind(paths, root, forced)


class _TorchvisionDataModule(MAEDataModule):
    """Shared code of the torchvision datasets: ``root`` plus an explicit ``download`` switch."""

    def __init__(
        self, root: str | Path = "data", download: bool = False, eval_crop_ratio: float = 1.0, **kwargs
    ) -> None:
        super().__init__(eval_crop_ratio=eval_crop_ratio, **kwargs)
        self.root = str(root)
        self.download = download

    def prepare_data(self) -> None:
        # Runs on one process per node: downloads here, never in setup.
        if self.download:
            self._make(train=True, transform=None, download=True)
            self._make(train=False, transform=None, download=True)

    def build_dataset(self, split: str, transform: Callable) -> Dataset:
        return self._make(train=split == "train", transform=transform, download=False)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        raise NotImplementedError


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (50k/10k 32x32 images) through torchvision; ``download: true`` fetches it once."""

    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)
    dataset_class = datasets.CIFAR10

    def __init__(
        self, root: str | Path = "data", download: bool = False, img_size: int | tuple[int, int] = 32, **kwargs
    ) -> None:
        super().__init__(root=root, download=download, img_size=img_size, **kwargs)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        return self.dataset_class(self.root, train=train, transform=transform, download=download)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50k/10k 32x32 images, 100 classes) through torchvision."""

    default_mean = (0.5071, 0.4865, 0.4409)
    default_std = (0.2673, 0.2564, 0.2762)
    dataset_class = datasets.CIFAR100


class STL10DataModule(_TorchvisionDataModule):
    """STL-10 through torchvision: pretrains on ``train+unlabeled`` (105k 96x96 images), validates on ``test``."""

    default_mean = (0.4467, 0.4398, 0.4066)
    default_std = (0.2603, 0.2566, 0.2713)

    def __init__(
        self, root: str | Path = "data", download: bool = False, img_size: int | tuple[int, int] = 96, **kwargs
    ) -> None:
        super().__init__(root=root, download=download, img_size=img_size, **kwargs)

    def _make(self, train: bool, transform: Callable | None, download: bool) -> Dataset:
        split = "train+unlabeled" if train else "test"
        return datasets.STL10(self.root, split=split, transform=transform, download=download)
