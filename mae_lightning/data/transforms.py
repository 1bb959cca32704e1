"""The image pipelines of the paper: random resized crop + flip for pretraining, resize + centre crop to evaluate."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL modes that give an image of the channel count the model expects.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class ToChannels:
    """Convert a PIL image of any mode (grayscale, palette, RGBA, CMYK, ...) to ``in_chans`` channels."""

    def __init__(self, in_chans: int) -> None:
        if in_chans not in _MODES:
            raise ValueError(
                f"image files can be read as 1, 3 or 4 channels, got in_chans={in_chans}; for other band counts "
                "store the bands as arrays (.npy shaped (C, H, W) or multi-band .tif), which ImageFolderDataModule "
                "reads with any in_chans"
            )
        self.mode = _MODES[in_chans]

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def pretrain_transform(
    img_size: tuple[int, int],
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.2, 1.0),
    horizontal_flip: bool = True,
) -> T.Compose:
    """MAE's pretraining augmentation: RandomResizedCrop(scale=(0.2, 1), bicubic), flip, normalise."""
    steps = [
        ToChannels(in_chans),
        T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
    ]
    if horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(
    img_size: tuple[int, int], in_chans: int, mean: Sequence[float], std: Sequence[float], crop_ratio: float = 0.875
) -> T.Compose:
    """Resize the shorter side to ``size / crop_ratio`` (256 for 224), then centre-crop ``img_size``.

    For a non-square ``img_size`` the longer side sets the resize, so the crop never reaches past the image.
    """
    resize = int(max(img_size) / crop_ratio)
    return T.Compose(
        [
            ToChannels(in_chans),
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def finetune_transform(
    img_size: tuple[int, int],
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.08, 1.0),
    rand_augment: tuple[int, int] = (2, 9),
    random_erasing: float = 0.25,
) -> T.Compose:
    """The fine-tuning augmentation of the official recipe (timm ``rand-m9-mstd0.5-inc1``, ``reprob 0.25``).

    RandomResizedCrop + flip, RandAugment (``num_ops``, ``magnitude``; torchvision's, without timm's
    magnitude noise), normalise, then RandomErasing with per-pixel normal noise (timm's ``pixel`` mode).
    MixUp/CutMix act on batches and live in the fine-tuning module.
    """
    num_ops, magnitude = rand_augment
    steps = [
        ToChannels(in_chans),
        T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
    ]
    if num_ops > 0:
        steps.append(T.RandAugment(num_ops, magnitude, interpolation=T.InterpolationMode.BICUBIC))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if random_erasing > 0:
        steps.append(T.RandomErasing(p=random_erasing, value="random"))
    return T.Compose(steps)
