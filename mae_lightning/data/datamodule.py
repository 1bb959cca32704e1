"""LightningDataModules: one base that owns transforms and loaders, one small subclass per source."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from mae_lightning.data.datasets import Digits, FlatImageFolder, SkipUnreadable, is_image_file, load_image
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
    eval_transform,
    finetune_transform,
    pretrain_transform,
)


class MAEDataModule(LightningDataModule):
    """Base DataModule: MAE augmentation for training, resize + centre crop for evaluation.

    ``img_size`` and ``in_chans`` are stated here once; the CLI links them into the model.
    Batches are ``(images, targets)`` with images (N, in_chans, H, W); unlabelled data has target -1.
    Subclasses implement :meth:`build_dataset`.

    Args:
        img_size: side of the (square) crop, or (height, width).
        in_chans: channels the model expects; every image is converted to it.
        batch_size: images per device and step.
        num_workers: DataLoader worker processes per device.
        pin_memory: page-locked host memory for faster copies to a GPU.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        crop_scale: area range of RandomResizedCrop; the paper uses (0.2, 1.0).
        horizontal_flip: random horizontal flips in training.
        eval_crop_ratio: evaluation resizes the shorter side to ``img_size / eval_crop_ratio``
            and centre-crops (224/256 = 0.875 on ImageNet; 1.0 keeps the whole image).
        mean: per-channel normalisation mean; defaults to the dataset's.
        std: per-channel normalisation std; defaults to the dataset's.
        seed: seed of the data order and the augmentations; defaults to ``seed_everything``'s (or 0).
            Stored in checkpoints, so a resumed run reads the same images in the same order.
        max_bad_image_fraction: share of unreadable image files (empty, truncated, not images)
            that are skipped with a warning; past it the run stops. In [0, 1].
        augmentation: ``"pretrain"`` (crop + flip, MAE pretraining and linear probing) or ``"finetune"``
            (crop + flip + RandAugment + random erasing, the fine-tuning recipe).
        rand_augment: RandAugment (num_ops, magnitude) of the ``"finetune"`` augmentation.
        random_erasing: probability of RandomErasing in the ``"finetune"`` augmentation.
    """

    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD

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
        if not 0 < eval_crop_ratio <= 1:
            raise ValueError(f"eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
        if not 0 <= max_bad_image_fraction <= 1:
            raise ValueError(f"max_bad_image_fraction must be in [0, 1], got {max_bad_image_fraction}")
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.max_bad_image_fraction = max_bad_image_fraction
        self._resume_state: dict[str, int] | None = None
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.mean = tuple(mean) if mean is not None else self._default_stats(self.default_mean, in_chans)
        self.std = tuple(std) if std is not None else self._default_stats(self.default_std, in_chans)
        if len(self.mean) != in_chans or len(self.std) != in_chans:
            raise ValueError(f"mean and std need in_chans={in_chans} values, got mean={self.mean}, std={self.std}")
        self.crop_scale = tuple(crop_scale)
        self.horizontal_flip = horizontal_flip
        self.eval_crop_ratio = eval_crop_ratio
        if augmentation == "pretrain":
            self.train_transform = pretrain_transform(
                self.img_size, in_chans, self.mean, self.std, self.crop_scale, horizontal_flip
            )
        elif augmentation == "finetune":
            if not 0 <= random_erasing <= 1:
                raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing}")
            if rand_augment[0] > 0 and in_chans not in (1, 3):
                raise ValueError(
                    f"RandAugment's colour operations take 1 or 3 channels, got in_chans={in_chans}; "
                    "set rand_augment: [0, 0] to fine-tune without it"
                )
            self.train_transform = finetune_transform(
                self.img_size, in_chans, self.mean, self.std, self.crop_scale, tuple(rand_augment), random_erasing
            )
        else:
            raise ValueError(f"augmentation must be 'pretrain' or 'finetune', got {augmentation!r}")
        self.augmentation = augmentation
        self.rand_augment = tuple(rand_augment)
        self.random_erasing = random_erasing
        self.eval_transform = eval_transform(self.img_size, in_chans, self.mean, self.std, eval_crop_ratio)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @staticmethod
    def _default_stats(stats: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
        # Grayscale takes the mean of the colour statistics; other counts repeat it per band.
        if len(stats) == in_chans:
            return tuple(stats)
        return (sum(stats) / len(stats),) * in_chans

    def build_dataset(self, split: str, transform: Callable) -> Dataset | None:
        """The dataset of ``split`` ("train" or "val") with ``transform`` applied, or None if there is none."""
        raise NotImplementedError

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

    def _loader(self, dataset: Dataset | None, train: bool):
        if dataset is None:
            return []
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            # Pinned memory only speeds up copies to an accelerator; on a CPU-only machine it just warns.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            # Workers' base seeds from the loader's own generator: the global state (masking) is left alone.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), augmented per sample, resumable mid-epoch (see ``data/resumable.py``)."""
        if self.train_set is None:
            return []
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=self.seed,
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
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        return loader

    def state_dict(self) -> dict[str, int]:
        """The data seed and, under a trainer, the epoch and the batches of it already trained on."""
        trainer = self.trainer
        if trainer is None or trainer.num_training_batches in (0, float("inf")):
            return {"seed": self.seed, "epoch": 0, "batches_done": 0}
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # a finished epoch: resume at the start of the next
            epoch, done = epoch + 1, 0
        return {"seed": self.seed, "epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.seed = state_dict["seed"]
        self._resume_state = dict(state_dict)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


class DigitsDataModule(MAEDataModule):
    """scikit-learn's 8x8 handwritten digits, bundled offline (see :class:`Digits`); 1 channel by default."""

    default_mean = (0.3052,)  # of the 1,500 training images, pixels scaled to 0..1
    default_std = (0.3749,)

    def __init__(self, img_size: int | tuple[int, int] = 32, in_chans: int = 1, **kwargs) -> None:
        super().__init__(img_size=img_size, in_chans=in_chans, **kwargs)

    def build_dataset(self, split: str, transform: Callable) -> Dataset:
        return Digits(split, transform)


class ImageFolderDataModule(MAEDataModule):
    """Images on disk: ImageNet-style ``root/<split_dir>/<class>/*.jpg`` or a flat folder.

    When ``root/<train_dir>`` exists it is the training set and ``root/<val_dir>`` (if present)
    the validation set; each is read with class sub-folders as labels when it has them, and as
    unlabelled images (target -1) otherwise. When ``root/<train_dir>`` does not exist, all of
    ``root`` is the training set and there is no validation.

    Args:
        root: the dataset folder.
        train_dir: training sub-folder.
        val_dir: validation sub-folder ("val" for ImageNet, "test" for the CIFAR-10 JPEG folders).
        decode: ``"pil"`` decodes, augments and normalises in the DataLoader workers; ``"tensor"``
            decodes with torchvision.io and augments uint8 tensors in the workers, and converts
            to normalised floats on the training device (less CPU per image, a quarter of the
            bytes to copy: the path for fast GPUs; see benchmarks/RESULTS.md). With
            ``augmentation: finetune`` the workers also normalise, for random erasing's noise, and
            the training batches cross as floats.
        **kwargs: the :class:`MAEDataModule` arguments.
    """

    def __init__(
        self, root: str | Path, train_dir: str = "train", val_dir: str = "val", decode: str = "pil", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} does not exist or is not a folder")
        if decode not in ("pil", "tensor"):
            raise ValueError(f"decode must be 'pil' or 'tensor', got {decode!r}")
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.decode = decode
        self.loader = load_image
        if decode == "tensor":
            self.loader = ReadImageUint8(self.in_chans)
            self.train_transform = self._train_transform_uint8()
            self.eval_transform = eval_transform_uint8(self.img_size, self.eval_crop_ratio)

    def _train_transform_uint8(self) -> Callable:
        if self.augmentation == "finetune":
            return finetune_transform_uint8(
                self.img_size, self.mean, self.std, self.crop_scale, self.rand_augment, self.random_erasing
            )
        return pretrain_transform_uint8(self.img_size, self.crop_scale, self.horizontal_flip)

    def build_dataset(self, split: str, transform: Callable) -> Dataset | None:
        split_root = self.root / (self.train_dir if split == "train" else self.val_dir)
        if not split_root.is_dir():
            if split != "train":
                return None
            split_root = self.root
        return SkipUnreadable(_folder_dataset(split_root, transform, self.loader), self.max_bad_image_fraction)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Fine-tuning batches come normalised from the workers; the others cross as uint8.
        if batch[0].dtype == torch.uint8:
            return (normalize_uint8(batch[0], self.mean, self.std), *batch[1:])
        return batch


def _folder_dataset(root: Path, transform: Callable, loader: Callable) -> Dataset:
    """Class sub-folders as labels (torchvision ImageFolder) when the folder has only sub-folders."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if entries and all(p.is_dir() for p in entries):
        return datasets.ImageFolder(str(root), transform=transform, loader=loader, is_valid_file=is_image_file)
    return FlatImageFolder(root, transform, loader)


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
