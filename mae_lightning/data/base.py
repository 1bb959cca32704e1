"""The base DataModule: argument checks, the pipeline of its samples, statistics, one loader per split, resume state."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from mae_lightning.data.class_order import class_interleaved_order, labels_of
from mae_lightning.data.datasets import SkipUnreadable
from mae_lightning.data.pipelines import IMAGE_PIPELINES, Pipeline, pipeline_for
from mae_lightning.data.resumable import PerSampleSeeds, ResumableDataLoader, ResumableSampler
from mae_lightning.data.statistics import (
    NormalizeBands,
    band_statistics,
    checked_statistics,
    per_channel,
    short,
    statistics_in_checkpoint,
)
from mae_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToChannels


class MAEDataModule(LightningDataModule):
    """Base DataModule: MAE augmentation for training, resize + centre crop for evaluation.

    ``img_size`` and ``in_chans`` are stated here once; the CLI links them into the model.
    Batches are ``(images, targets)`` with images (N, in_chans, H, W); unlabelled data has target -1.
    Subclasses implement :meth:`build_dataset`; what its samples are is :attr:`file_kind`, and
    ``data/pipelines.py`` holds how each kind travels to the device.

    Image data (PIL images) are normalised with ``mean``/``std`` or the class's defaults. Array data (float
    tensors of any band count in their own units, ``data/arrays.py``) are normalised per band with
    ``mean``/``std`` when given, else with statistics found when the first DataLoader is made (the order of
    the sources is in ``data/statistics.py``), logged once and stored with checkpoints (:meth:`state_dict`).

    A validation cut short by ``limit_val_batches`` reads a labelled set in a seeded class-interleaved order
    when its own order would cover fewer classes (``data/class_order.py``).

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
    # Image files: "pil", "tensor" or "gpu" (see data/pipelines.py). Set with set_decode.
    decode: str = "pil"
    # Array data: the arguments of the same names of ImageFolderDataModule.
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
        self.normalize_bands = NormalizeBands()
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._stats_given = mean is not None
        self._statistics_checkpoint: Path | None = None
        if mean is not None and std is not None:
            self._set_stats(mean, std)
        if self.file_kind == "image":
            self._use_image_defaults()
        self._transforms: tuple[Callable, Callable] | None = None
        self._warned_uncovered = False
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _use_image_defaults(self) -> None:
        """Image files: check that ``in_chans`` is a channel count they convert to; default statistics."""
        ToChannels(self.in_chans)  # raises for a count PIL cannot convert an image to
        if self.mean is None:
            self.mean = per_channel(self.default_mean, self.in_chans)
            self.std = per_channel(self.default_std, self.in_chans)

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        """The dataset of ``split`` ("train" or "val") with ``transform`` applied, or None if there is none."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        """How many classes the labels index, or None when the data has no labels or does not say."""
        return None

    # ------------------------------------------------------------------ the pipeline of the samples
    def set_decode(self, decode: str) -> None:
        """Check and set :attr:`decode` (subclasses that read image files call this)."""
        if decode not in IMAGE_PIPELINES:
            raise ValueError(f"decode must be 'pil', 'tensor' or 'gpu', got {decode!r}")
        IMAGE_PIPELINES[decode].check(self)
        self.decode = decode

    @property
    def pipeline(self) -> Pipeline:
        """How the samples travel from the files to the device, by :attr:`file_kind` and :attr:`decode`."""
        return pipeline_for(self.file_kind, self.decode)

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
            self._transforms = self.pipeline.transforms(self)
        return self._transforms

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.pipeline.before_transfer(batch, self)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.pipeline.on_device(batch, self)

    # ------------------------------------------------------------------ per-band statistics
    def _set_stats(self, mean: Sequence[float], std: Sequence[float], source: str | None = None) -> None:
        self.mean, self.std = checked_statistics(mean, std, self.in_chans)
        self.normalize_bands.set(self.mean, self.std)
        if source is not None:
            rank_zero_info(f"data: per-band mean {short(self.mean)} and std {short(self.std)}, {source}")

    def use_statistics_of(self, path: str | os.PathLike) -> None:
        """Normalise array data with the statistics stored in the checkpoint at ``path``, when it holds them.

        The module that starts from a weights file (``pretrained``, ``init_weights``) names it here. The file is read
        by :meth:`resolve_statistics`; one without stored statistics leaves them to be computed. The last call wins.
        """
        self._statistics_checkpoint = Path(path)

    def resolve_statistics(self) -> None:
        """Give array data its per-band mean and std, if it has none yet (``data/statistics.py``).

        Called when a DataLoader is made: after Lightning has restored a checkpoint's (which it does after
        ``setup``), before any worker starts. A script that reads the datasets directly calls it.
        """
        if self.file_kind != "array" or self.mean is not None:
            return
        path = self._statistics_checkpoint
        stored = statistics_in_checkpoint(path, type(self).__qualname__, self.in_chans) if path else None
        if stored is not None:
            self._set_stats(*stored, f"as stored in {path}")
            return
        train = self.build_dataset("train", None)
        if isinstance(train, SkipUnreadable):  # read the files themselves: its replacements would repeat files
            train = train.dataset
        mean, std, read = band_statistics(train, self.stats_files, self.seed)
        self._set_stats(mean, std, f"computed from {read} training files drawn with seed {self.seed}")

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

    def _loader_args(self) -> dict[str, Any]:
        """The DataLoader arguments of every split."""
        return dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            # Pinned memory only speeds up copies to an accelerator; on a CPU-only machine it just warns.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=self.pipeline.collate_fn,
            # Workers' base seeds from the loader's own generator: the global state (masking) is left alone.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _loader(self, dataset: Dataset | None, sampler: Sampler | None = None):
        """An evaluation DataLoader: in order, every sample, the last batch as it comes."""
        if dataset is None:
            return []
        self.resolve_statistics()
        return DataLoader(dataset, shuffle=False if sampler is None else None, sampler=sampler, **self._loader_args())

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
            PerSampleSeeds(self.train_set, self.seed), sampler, self.state_dict, drop_last=True, **self._loader_args()
        )
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._validation_set())

    def _validation_set(self) -> Dataset | None:
        """The validation set, class-interleaved when ``limit_val_batches`` cuts it short (see the class notes)."""
        trainer, dataset = self.trainer, self.val_set
        if trainer is None or dataset is None:
            return dataset
        world = trainer.world_size
        # Batches per process as Lightning counts them: its DistributedSampler pads every share to the same size.
        batches = math.ceil(math.ceil(len(dataset) / world) / self.batch_size)
        limit = trainer.limit_val_batches
        read = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        labels = labels_of(dataset) if 0 < read < batches else None
        if labels is None:
            return dataset
        # The processes take turns through the order, so together they read its first `seen` samples.
        seen = read * self.batch_size * world
        order = class_interleaved_order(labels, self.seed)
        covered, in_order, classes = len({labels[i] for i in order[:seen]}), len(set(labels[:seen])), len(set(labels))
        if covered < classes and not self._warned_uncovered:
            self._warned_uncovered = True
            rank_zero_warn(
                f"validation reads {read} batch(es) of {self.batch_size} per process (trainer.limit_val_batches="
                f"{limit}): they cover {covered} of the {classes} classes of the validation set"
            )
        return dataset if in_order >= covered else Subset(dataset, order)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or self.val_set is None:
            return self._loader(self.val_set)
        # Lightning's own predict sampler gives the processes shares that differ by one sample, hence
        # sometimes by one batch: under FSDP, whose every forward needs all processes, the longer share
        # would wait forever. Padded as in validation; the embedding writer keeps each index once.
        sampler = DistributedSampler(
            self.val_set, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
        return self._loader(self.val_set, sampler=sampler)

    # ------------------------------------------------------------------ resume state
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
