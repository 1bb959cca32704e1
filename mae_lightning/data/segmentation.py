"""Image + mask pairs for semantic segmentation: the folders, the mask files, the joint augmentation, the batches.

Two layouts are read, each split a pair of folders matched by file stem:

- ``folders`` (CamVid, Cityscapes-style exports, most labelling tools): ``<root>/<split>/images/*`` and
  ``<root>/<split>/masks/*``;
- ``ade20k`` (ADEChallengeData2016, as mmsegmentation reads it): ``<root>/images/<split>/*`` and
  ``<root>/annotations/<split>/*`` with the splits ``training`` and ``validation``.

A mask holds one class index per pixel (PNG, 8 or 16 bits; ``.npy``; ``.tif``). ``ignore_index`` marks the pixels
that count nowhere (void); ``reduce_zero_label`` is mmsegmentation's: label 0 ("other" in ADE20K) becomes the ignore
index and every other label moves down by one. Training crops and flips image and mask together
(``torchvision.transforms.v2``, the mask with nearest-neighbour resampling) and jitters the colours of the image
alone; evaluation reads whole images, of any size, batched by padding (images with 0, masks with the ignore index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from mae_lightning.data.arrays import INTERPOLATIONS, ReadArray
from mae_lightning.data.base import MAEDataModule
from mae_lightning.data.datasets import ReadImage, SkipUnreadable, UnreadableImageError, check_first_readable
from mae_lightning.data.folders import DATA_EXTENSIONS, FILE_KINDS
from mae_lightning.data.folders import file_kind as kind_of_files
from mae_lightning.data.pipelines import Pipeline
from mae_lightning.data.transforms import ToChannels

MASK_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")
# Where each layout keeps a split's images and masks: (images folder, masks folder) under the root.
LAYOUTS = {
    "folders": {"split_names": ("train", "val"), "pattern": "{split}/{kind}", "kinds": ("images", "masks")},
    "ade20k": {
        "split_names": ("training", "validation"),
        "pattern": "{kind}/{split}",
        "kinds": ("images", "annotations"),
    },
}


class BadMaskError(ValueError):
    """A mask that does not fit its image or holds labels outside the classes: the run stops, naming the file."""


def read_mask(path: str) -> Tensor:
    """A mask file as an (H, W) int64 tensor of its labels (PNG in any integer mode, ``.npy``, ``.tif``).

    Raises:
        UnreadableImageError: the file cannot be read or is not 2-D.
    """
    try:
        if path.lower().endswith(".npy"):
            labels = np.load(path, allow_pickle=False)
        elif path.lower().endswith((".tif", ".tiff")):
            labels = tifffile.imread(path)
        else:
            with Image.open(path) as img:
                # Palette PNGs keep their indices (mode P); RGB masks are colours, not labels.
                if img.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
                    raise ValueError(f"a mask is one label per pixel, got an image of mode {img.mode}")
                labels = np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
    labels = np.squeeze(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise UnreadableImageError(path, f"a mask is a 2-D array of integer labels, got {labels.dtype} {labels.shape}")
    return torch.from_numpy(labels.astype(np.int64))


class MaskLabels:
    """Checks a mask's labels and applies ``reduce_zero_label``.

    Args:
        num_classes: labels are ``0 .. num_classes - 1`` (after the reduction).
        ignore_index: the label of pixels left out of the loss and the metrics.
        reduce_zero_label: 0 becomes ``ignore_index``, every other label but ``ignore_index`` itself ``label - 1``
            (mmsegmentation's ADE20K).
    """

    def __init__(self, num_classes: int, ignore_index: int, reduce_zero_label: bool = False) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, labels: Tensor, path: str) -> Tensor:
        if self.reduce_zero_label:  # as mmsegmentation: pixels already at the ignore index stay there
            labels = torch.where((labels == 0) | (labels == self.ignore_index), self.ignore_index, labels - 1)
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            values = sorted(set(labels[bad].unique().tolist()))
            raise BadMaskError(
                f"{path}: labels {values[:8]}{' (after reduce_zero_label)' if self.reduce_zero_label else ''} are "
                f"outside [0, {self.num_classes}) and are not the ignore index "
                f"{self.ignore_index}: set data.init_args.num_classes, ignore_index or reduce_zero_label to the masks'"
            )
        return labels


class PairList(Dataset):
    """Image and mask files, paired: items ``(image, mask)``, with their index too when ``with_index``.

    Args:
        samples: (image path, mask path) pairs; a mask path of None gives a mask of ``ignore_index`` everywhere
            (images to predict).
        load_image: reads an image file (PIL image or (C, H, W) float tensor).
        mask_labels: checks and maps the labels of a mask.
        transform: of ``(tv_tensors.Image, tv_tensors.Mask)``; None returns the image as loaded.
        with_index: items end with the sample's index (evaluation: the prediction writer names files by it).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, str | None]],
        load_image: Callable,
        mask_labels: MaskLabels,
        transform: Callable | None = None,
        with_index: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.load_image = load_image
        self.mask_labels = mask_labels
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_path, mask_path = self.samples[index]
        image = self.load_image(image_path)
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
        if mask_path is None:
            mask = torch.full((height, width), self.mask_labels.ignore_index, dtype=torch.int64)
        else:
            mask = self.mask_labels(read_mask(mask_path), mask_path)
            if tuple(mask.shape) != (height, width):
                raise BadMaskError(
                    f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} pixels but its image {image_path} is "
                    f"{width}x{height}: a mask labels every pixel of its image"
                )
        if self.transform is not None:
            if isinstance(image, Image.Image):
                image = v2.functional.pil_to_tensor(image)
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            image, mask = image.as_subclass(Tensor), mask.as_subclass(Tensor)
        return (image, mask, index) if self.with_index else (image, mask)


def train_transform(
    img_size: tuple[int, int],
    crop_scale: tuple[float, float],
    horizontal_flip: bool,
    color_jitter: float,
    normalize: Callable,
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
    uint8: bool = True,
) -> v2.Compose:
    """Random resized crop (of the crop's own aspect ratio, give or take 4/3) and flip of image and mask together,
    colour jitter of the image alone (``color_jitter`` scales brightness, contrast and saturation; image files only),
    then normalisation of the image."""
    aspect = img_size[1] / img_size[0]
    steps: list[Callable] = [
        v2.RandomResizedCrop(
            img_size, scale=crop_scale, ratio=(aspect * 3 / 4, aspect * 4 / 3), interpolation=interpolation
        ),
    ]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if uint8 and color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose([*steps, *to_normalised(normalize, uint8)])


def to_normalised(normalize: Callable, uint8: bool) -> list[Callable]:
    """The image as normalised floats (masks pass through): the end of every segmentation transform."""
    to_float = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)] if uint8 else []
    return [*to_float, normalize]


class NormalizeImage:
    """``v2.Normalize`` of the image of an (image, mask) pair whose mean and std are known only later (arrays)."""

    def __init__(self, normalize: Callable) -> None:
        self.normalize = normalize

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return tv_tensors.Image(self.normalize(image.as_subclass(Tensor))), mask


class PadToLargest:
    """Collate samples of different sizes: pad each image (with 0) and mask (with ``ignore_index``) at the bottom and
    the right to the largest height and width of the batch. Samples of one size are stacked as they are. Samples
    with an index (evaluation) give ``(images, masks, indices, sizes)``, ``sizes`` (N, 2) each image's own
    (height, width): the model reads each image without the padding (``Segmentation``)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, samples: list[tuple]) -> tuple:
        height = max(sample[0].shape[-2] for sample in samples)
        width = max(sample[0].shape[-1] for sample in samples)
        images, masks = [], []
        for image, mask, *_ in samples:
            pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
            images.append(torch.nn.functional.pad(image, pad, value=0.0))
            masks.append(torch.nn.functional.pad(mask, pad, value=self.ignore_index))
        batch = [torch.stack(images), torch.stack(masks)]
        if len(samples[0]) > 2:
            batch.append(torch.tensor([sample[2] for sample in samples]))
            batch.append(torch.tensor([tuple(sample[0].shape[-2:]) for sample in samples]))
        return tuple(batch)


class SegmentationPipeline(Pipeline):
    """Pairs from files to normalised batches: everything in the workers (image files or arrays)."""

    def __init__(self, ignore_index: int) -> None:
        self.collate_fn = PadToLargest(ignore_index)

    def transforms(self, data: SegmentationDataModule) -> tuple[Callable, Callable]:
        uint8 = data.file_kind == "image"
        if uint8:
            normalize = v2.Normalize(data.mean, data.std)
            interpolation = v2.InterpolationMode.BILINEAR
        else:
            normalize = NormalizeImage(data.normalize_bands)
            interpolation = INTERPOLATIONS[data.array_interpolation]
        train = train_transform(
            data.img_size, data.crop_scale, data.horizontal_flip, data.color_jitter, normalize, interpolation, uint8
        )
        return train, v2.Compose(to_normalised(normalize, uint8))


class SegmentationDataModule(MAEDataModule):
    """Images and their masks for semantic segmentation: training crops, whole-image evaluation, images to predict.

    Batches are ``(images (N, C, H, W), masks (N, H, W) int64)`` in training and
    ``(images, masks, indices, sizes)`` in evaluation, where images of different sizes are padded to the largest
    (masks with ``ignore_index``) and ``sizes`` (N, 2) holds each one's own (height, width). ``img_size`` is the
    training crop, (height, width) or a side.
    The pairs are listed, and the first one read and checked, when the DataModule is made; any pair is checked
    when it is read. Unreadable files are skipped and counted as images are; a mask of another size than its image,
    or with labels outside ``[0, num_classes)`` other than ``ignore_index``, stops the run in one line naming it.

    Image files are read with 1, 3 or 4 channels and normalised with ``mean``/``std`` (ImageNet's by default);
    arrays (``.npy``, ``.tif``, or PNG with ``file_kind: array``) of any band count are normalised per band, with
    statistics found as :class:`~mae_lightning.ImageFolderDataModule` finds them.

    Args:
        root: the dataset folder.
        num_classes: how many classes the labels index (the ignore index aside).
        class_names: one name per class, for the legend of the pictures and the per-class IoU table
            (default: ``class_0``, ...).
        ignore_index: label of the pixels left out of the loss and of every metric (void; 255 in mmsegmentation).
        reduce_zero_label: make label 0 the ignore index and move the others down by one (ADE20K's "other").
        layout: ``"folders"`` (``<root>/<split>/images``, ``<root>/<split>/masks``) or ``"ade20k"``
            (``<root>/images/<split>``, ``<root>/annotations/<split>``).
        train_dir: the training split's folder name (default by layout: ``train`` or ``training``).
        val_dir: the validation split's folder name (``val`` or ``validation``).
        images_dir: the images' folder name (``images``).
        masks_dir: the masks' folder name (``masks`` or ``annotations``).
        predict_dir: a folder of images (no masks) that ``predict`` segments; None predicts the validation images.
        color_jitter: brightness, contrast and saturation jitter of training images (image files; 0 disables it).
        file_kind: None decides from the image files; ``"image"`` or ``"array"`` as in ImageFolderDataModule.
        array_interpolation: resampling of array crops: ``"bilinear"`` or ``"bicubic"``.
        stats_files: arrays without ``mean``/``std``: how many training files their statistics come from.
        **kwargs: the :class:`MAEDataModule` arguments (``img_size``, ``in_chans``, ``batch_size``, ``crop_scale``,
            ``horizontal_flip``, ``mean``, ``std``, ``seed``, ``max_bad_image_fraction``, ...).
    """

    file_kind = None  # decided from the files found

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        layout: str = "folders",
        train_dir: str | None = None,
        val_dir: str | None = None,
        images_dir: str | None = None,
        masks_dir: str | None = None,
        predict_dir: str | Path | None = None,
        color_jitter: float = 0.4,
        file_kind: str | None = None,
        array_interpolation: str = "bilinear",
        stats_files: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} does not exist or is not a folder")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'folders' or 'ade20k', got {layout!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is one of the {num_classes} classes: use a label outside them"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        if file_kind not in (None, *FILE_KINDS):
            raise ValueError(f"file_kind must be null, 'image' or 'array', got {file_kind!r}")
        if array_interpolation not in INTERPOLATIONS:
            raise ValueError(f"array_interpolation must be 'bilinear' or 'bicubic', got {array_interpolation!r}")
        self.layout = layout
        self._num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.mask_labels = MaskLabels(num_classes, ignore_index, reduce_zero_label)
        self.color_jitter = color_jitter
        self.array_interpolation = array_interpolation
        self.stats_files = stats_files
        self.predict_dir = Path(predict_dir) if predict_dir is not None else None
        self._pipeline = SegmentationPipeline(ignore_index)
        split_names, pattern = LAYOUTS[layout]["split_names"], LAYOUTS[layout]["pattern"]
        kinds = (images_dir or LAYOUTS[layout]["kinds"][0], masks_dir or LAYOUTS[layout]["kinds"][1])
        self._pairs = {}
        for split, name in zip(("train", "val"), (train_dir or split_names[0], val_dir or split_names[1]), strict=True):
            folders = [self.root / pattern.format(split=name, kind=kind) for kind in kinds]
            self._pairs[split] = list_pairs(*folders) if folders[0].is_dir() or split == "train" else None
        images = [image for pairs in self._pairs.values() if pairs for image, _ in pairs]
        self.file_kind = kind_of_files(images, self.root, file_kind)
        if self.file_kind == "image":
            self._use_image_defaults()
            self.load_image: Callable = ImageFile(self.in_chans)
        else:
            self.load_image = ReadArray(self.in_chans)
        for pairs in self._pairs.values():
            if pairs:
                self._check_first(pairs)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    def _check_first(self, pairs: list[tuple[str, str]]) -> None:
        """Read pairs in order up to the first readable one: it must have ``in_chans`` bands and fit its mask."""
        dataset = PairList(pairs, self.load_image, self.mask_labels)
        check_first_readable(dataset.__getitem__, len(pairs), "image/mask pairs", self.in_chans)

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        pairs = self._pairs["train" if split == "train" else "val"]
        if pairs is None:
            return None
        dataset = PairList(pairs, self.load_image, self.mask_labels, transform, with_index=split != "train")
        return SkipUnreadable(dataset, self.max_bad_image_fraction, kind=self.file_kind)

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_dir is not None:
            images = list_images(self.predict_dir)
            dataset = PairList(
                [(image, None) for image in images], self.load_image, self.mask_labels, self.eval_transform, True
            )
            self.val_set = SkipUnreadable(dataset, self.max_bad_image_fraction, kind=self.file_kind)
        super().setup(stage)


class ImageFile:
    """Loader: an image file as a PIL image of ``in_chans`` channels (16-bit ones as :class:`ReadImage` reads them)."""

    def __init__(self, in_chans: int) -> None:
        self.read = ReadImage()
        self.channels = ToChannels(in_chans)

    def __call__(self, path: str) -> Image.Image:
        return self.channels(self.read(path))


def list_images(folder: Path) -> list[str]:
    """The image and array files directly in ``folder``, sorted.

    Raises:
        FileNotFoundError: the folder does not exist or holds none.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} does not exist or is not a folder")
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(DATA_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no image or array files ({', '.join(DATA_EXTENSIONS)}) in {str(folder)!r}")
    return files


def list_pairs(images: Path, masks: Path) -> list[tuple[str, str]]:
    """(image, mask) paths of the files of ``images`` and ``masks`` with the same stem, sorted.

    Raises:
        FileNotFoundError: a folder is missing or empty (one line naming it).
        ValueError: an image without a mask or a mask without an image (one line naming the first few).
    """
    image_files = {Path(p).stem: p for p in list_images(images)}
    if not masks.is_dir():
        raise FileNotFoundError(f"masks folder {str(masks)!r} does not exist (data.init_args.masks_dir)")
    mask_files = {p.stem: str(p) for p in sorted(masks.iterdir()) if p.name.lower().endswith(MASK_EXTENSIONS)}
    unpaired = [
        (image_files.keys() - mask_files.keys(), image_files, masks),
        (mask_files.keys() - image_files.keys(), mask_files, images),
    ]
    for missing, files, other in unpaired:
        if missing:
            names = ", ".join(Path(files[stem]).name for stem in sorted(missing)[:3])
            raise ValueError(
                f"{len(missing)} file(s) have no partner of the same name in {str(other)!r} ({names}"
                f"{', ...' if len(missing) > 3 else ''}): every image needs its mask and every mask its image"
            )
    return [(image_files[stem], mask_files[stem]) for stem in sorted(image_files)]
