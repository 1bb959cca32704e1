"""Folders of recordings as spectrogram images: the DataModule of audio MAE pretraining, fine-tuning and probing."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mae_lightning.data.audio import AUDIO_EXTENSIONS, FixedFrames, LogMel, ReadSpectrogram, SpecAugment
from mae_lightning.data.base import MAEDataModule
from mae_lightning.data.datasets import FileList, SkipUnreadable, check_first_readable
from mae_lightning.data.folders import FolderFiles, list_folder
from mae_lightning.data.pipelines import Pipeline


class NormalizedSpectrogram:
    """Fixed frames, the DataModule's normalisation (its ``normalize_bands``), then SpecAugment when given."""

    def __init__(self, frames: FixedFrames, normalize: Callable, spec_augment: SpecAugment | None = None) -> None:
        self.frames = frames
        self.normalize = normalize
        self.spec_augment = spec_augment

    def __call__(self, spectrogram: Tensor) -> Tensor:
        x = self.normalize(self.frames(spectrogram))
        return self.spec_augment(x) if self.spec_augment is not None else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.frames}, {self.normalize}, {self.spec_augment})"


class Spectrograms(Pipeline):
    """Recordings to normalised spectrograms, all in the workers: ``ReadSpectrogram`` then ``NormalizedSpectrogram``."""

    def loader(self, data: AudioFolderDataModule) -> Callable:
        return ReadSpectrogram(data.features)

    def transforms(self, data: AudioFolderDataModule) -> tuple[Callable, Callable]:
        frames = data.img_size[1]
        augment = (
            SpecAugment(*data.spec_augment) if data.augmentation == "finetune" and any(data.spec_augment) else None
        )
        train = NormalizedSpectrogram(FixedFrames(frames, random=True), data.normalize_bands, augment)
        return train, NormalizedSpectrogram(FixedFrames(frames, random=False), data.normalize_bands)


class MultiLabelFiles(FileList):
    """Listed recordings with multi-hot float targets (N, num_classes) instead of class indices."""

    def __init__(self, samples: list[tuple[str, list[int]]], classes: list[str], loader: Callable, transform=None):
        super().__init__([(path, -1) for path, _ in samples], classes, loader, transform)
        self.label_sets = [labels for _, labels in samples]
        self.targets = None  # not class indices: the class-interleaved validation order does not apply

    def __getitem__(self, index: int):
        sample, _ = super().__getitem__(index)
        target = torch.zeros(len(self.classes))
        target[self.label_sets[index]] = 1.0
        return sample, target


class AudioFolderDataModule(MAEDataModule):
    """Recordings on disk as log-mel spectrograms ``(1, n_mels, frames)``: pretraining, fine-tuning and probing.

    ``root/<train_dir>`` and ``root/<val_dir>`` hold audio files (WAV, FLAC, OGG, ...), in class folders (their
    labels) or flat (unlabelled), as :class:`~mae_lightning.ImageFolderDataModule` reads images. With
    ``labels_file`` the labels are multi-label (AudioSet's setting): a CSV with columns ``file`` (the path under
    ``root``) and ``labels`` (class names separated by ``;``); the classes are the sorted names found, and targets are
    multi-hot (fine-tune and probe with ``multilabel: true``).

    Each recording is read with soundfile, mixed to mono, resampled to ``sample_rate`` and turned into a log-mel
    spectrogram (``data/audio.py``: ``n_mels`` bands of ``win_ms`` windows every ``hop_ms``), then cropped or padded
    with silence to ``frames`` columns: at a random place in training, centred in evaluation. ``img_size`` is
    ``(n_mels, frames)``: the spectrogram is the image the model sees (one channel, frequency down the rows, time
    across). The spectrograms are normalised with one mean and std computed over the frames of ``stats_files``
    training recordings (AST's dataset normalisation), logged and stored with checkpoints as the band statistics
    of arrays are, or given as ``mean``/``std``. Fine-tuning (``augmentation: finetune``) adds SpecAugment
    (``spec_augment``); mixup is the fine-tuning module's. Unreadable or empty recordings are skipped and counted,
    as images are.

    Args:
        root: the dataset folder.
        img_size: (mel bins, frames) of the spectrograms.
        in_chans: 1 (a spectrogram is one channel; stated for the command line, which links it to the model).
        sample_rate: rate every recording is resampled to, in Hz.
        win_ms: analysis window in milliseconds.
        hop_ms: hop between frames in milliseconds (a frame is a column).
        n_fft: FFT size; None: the window rounded up to a power of two. Too many mel bins for the frequency
            resolution leave empty filters, which is refused: raise ``sample_rate`` or ``n_fft``, or lower ``n_mels``.
        f_min: lowest filter frequency in Hz.
        f_max: highest filter frequency in Hz (None: half the sample rate).
        train_dir: training sub-folder.
        val_dir: validation sub-folder ("test" for FSDD's official split).
        labels_file: multi-label CSV (see above), or None for class folders.
        spec_augment: (frequency, time) SpecAugment mask widths of fine-tuning, in mel bins and frames.
        stats_files: how many training recordings, drawn by ``seed``, the normalisation is computed from.
        **kwargs: the :class:`MAEDataModule` arguments (``batch_size``, ``num_workers``, ``mean``, ``std``, ``seed``,
            ``max_bad_image_fraction``, ``augmentation``, ...). RandAugment and random erasing do not apply.
    """

    file_kind = "array"  # float spectrograms normalised with stored statistics, as arrays are

    def __init__(
        self,
        root: str | Path,
        img_size: tuple[int, int] = (128, 1024),
        in_chans: int = 1,
        sample_rate: int = 16000,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        f_min: float = 20.0,
        f_max: float | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        labels_file: str | None = None,
        spec_augment: tuple[int, int] = (48, 192),
        stats_files: int = 256,
        **kwargs,
    ) -> None:
        if in_chans != 1:
            raise ValueError(f"spectrograms have one channel: in_chans must be 1, got {in_chans}")
        super().__init__(img_size=img_size, in_chans=1, **kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} does not exist or is not a folder")
        if stats_files < 1:
            raise ValueError(f"stats_files must be >= 1, got {stats_files}")
        self.features = LogMel(sample_rate, self.img_size[0], win_ms, hop_ms, n_fft, f_min, f_max)
        self.features.filters()  # raises, naming the settings, when a mel filter would be empty
        self.spec_augment = tuple(spec_augment)
        self.stats_files = stats_files
        self.loader = self.pipeline.loader(self)
        self._files = {"train": self._list(self.root / train_dir), "val": None}
        if (self.root / val_dir).is_dir():
            self._files["val"] = self._list(self.root / val_dir)
        self.labels = self._read_labels(labels_file) if labels_file else None
        for files in self._files.values():
            if files is not None:
                self._check_readable(files)

    @property
    def pipeline(self) -> Pipeline:
        return SPECTROGRAMS

    @staticmethod
    def _list(folder: Path) -> FolderFiles:
        return list_folder(folder, AUDIO_EXTENSIONS, kind="audio")

    def _read_labels(self, labels_file: str) -> dict[str, list[str]]:
        """file path (under root) -> its label names, from the CSV; every listed recording must have a row."""
        with open(labels_file, newline="") as f:
            rows = {row["file"]: [name for name in row["labels"].split(";") if name] for row in csv.DictReader(f)}
        for files in self._files.values():
            unlabelled = (
                [path for path, _ in files.samples if str(Path(path).relative_to(self.root)) not in rows]
                if files
                else []
            )
            if unlabelled:
                raise ValueError(
                    f"{len(unlabelled)} recording(s) have no row in {labels_file} (first: {unlabelled[0]}): every "
                    "recording under the training and validation folders needs its labels"
                )
        return rows

    def _check_readable(self, files: FolderFiles) -> None:
        """Read recordings in order up to the first good one, so a folder of unreadable files stops the run now."""
        what = f"audio files under {str(files.root)!r}"
        check_first_readable(lambda i: self.loader(files.samples[i][0]), len(files.samples), what, self.in_chans)

    @property
    def classes(self) -> list[str]:
        """The class names: the training folder's class folders, or the names in ``labels_file``."""
        if self.labels is not None:
            return sorted({name for names in self.labels.values() for name in names})
        return self._files["train"].classes

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) or None

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        files = self._files["train" if split == "train" else "val"]
        if files is None:
            return None
        if self.labels is None:
            dataset = FileList(files.samples, files.classes, self.loader, transform)
        else:
            index = {name: i for i, name in enumerate(self.classes)}
            samples = [
                (path, [index[name] for name in self.labels[str(Path(path).relative_to(self.root))]])
                for path, _ in files.samples
            ]
            dataset = MultiLabelFiles(samples, self.classes, self.loader, transform)
        return SkipUnreadable(dataset, self.max_bad_image_fraction, kind="audio")


SPECTROGRAMS = Spectrograms()
