"""Images or arrays on disk, one file per sample: an ImageNet-style folder of class folders, or a flat folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mae_lightning.data.arrays import INTERPOLATIONS
from mae_lightning.data.base import MAEDataModule
from mae_lightning.data.datasets import FileList, SkipUnreadable, check_first_readable
from mae_lightning.data.folders import FILE_KINDS, FolderFiles, list_folder, split_by_fraction
from mae_lightning.data.folders import file_kind as kind_of_files  # the argument file_kind shadows the name


class ImageFolderDataModule(MAEDataModule):
    """Images or arrays on disk: ImageNet-style ``root/<split_dir>/<class>/*`` or a flat folder.

    When ``root/<train_dir>`` exists it is the training set and ``root/<val_dir>`` (if present)
    the validation set; each is read with class sub-folders as labels when it has them, and as
    unlabelled files (target -1) otherwise. When ``root/<train_dir>`` does not exist, all of
    ``root`` is the training set and there is no validation, unless ``val_fraction`` cuts one out.

    The files are image files (.jpg, .png, ..., read as 1, 3 or 4 channels) or arrays of any band count
    (``data/arrays.py``) in their own units, normalised per band (see :class:`MAEDataModule`). The folders
    are listed, and the first file of each read, when the DataModule is made, so an empty folder, unreadable
    data or a wrong ``in_chans`` stop the run before it starts, in one line.

    Args:
        root: the dataset folder.
        train_dir: training sub-folder.
        val_dir: validation sub-folder ("val" for ImageNet, "test" for the CIFAR-10 JPEG folders).
        decode: image files only. ``"pil"`` decodes, augments and normalises in the DataLoader workers;
            ``"tensor"`` decodes with torchvision.io, augments uint8 tensors in the workers and normalises on
            the training device (less CPU per image, a quarter of the bytes to copy: the path for fast GPUs;
            fine-tuning batches are normalised in the workers). ``"gpu"`` (pretraining on a CUDA GPU, refused
            without one): nvJPEG decodes each batch and the crops run on the GPU. See ``data/pipelines.py``.
        val_fraction: validate on this share of the training folder (``root/<train_dir>``, or ``root``),
            drawn by ``seed`` from each class separately (stratified; from all files when unlabelled),
            the rest training. None: ``root/<val_dir>`` validates, if it exists.
        file_kind: None decides from the files: ``.npy`` are arrays, other image suffixes images, and
            TIFF files go with the files beside them (arrays when alone). ``"image"`` reads TIFF files
            with PIL (8-bit RGB TIFFs, say), ``"array"`` with tifffile, and PNG files as arrays too: 16-bit
            images keep their full range, where image reading keeps 8 of their 16 bits (and warns once).
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
        listed = [path for folder in self._folders.values() if folder is not None for path, _ in folder.samples]
        self.file_kind = kind_of_files(listed, self.root, file_kind)  # of the training and validation files together
        self._check_channels()
        self.loader = self.pipeline.loader(self)
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

    def _check_readable(self, folder: FolderFiles) -> None:
        """Read files of ``folder`` in order up to the first good one: it must have ``in_chans`` bands."""
        read = self.pipeline.check_reader(self.loader, self)
        what = f"{self.file_kind} files under {str(folder.root)!r}"
        check_first_readable(lambda i: read(folder.samples[i][0]), len(folder.samples), what, self.in_chans)

    @property
    def num_classes(self) -> int | None:
        """The class folders of the training folder (else of the validation folder), None when both are flat."""
        labelled = [files for files in self._files.values() if files is not None and files.classes]
        return len(labelled[0].classes) if labelled else None

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
