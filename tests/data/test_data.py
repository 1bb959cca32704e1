"""The data layer: the bundled digits, the DataModules' batches and the MAE transforms, on real files on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from mae_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    Digits,
    DigitsDataModule,
    ImageFolderDataModule,
    MAEDataModule,
    STL10DataModule,
)
from mae_lightning.data.datasets import ReadImage
from mae_lightning.data.tensor_decode import ReadImageUint8
from mae_lightning.data.transforms import ToChannels, eval_transform, pretrain_transform

LOADER = {"num_workers": 0, "pin_memory": False}


def fit_module(cls, **kwargs):
    dm = cls(**LOADER, **kwargs)
    dm.setup("fit")
    return dm


def all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(targets)


# ---------------------------------------------------------------- Digits
@pytest.mark.parametrize(("split", "length"), [("train", 1500), ("val", 297)])
def test_digits_are_8x8_grayscale_with_int_labels_0_to_9(split, length):
    """The offline quickstart set has its documented size, image format and labels."""
    ds = Digits(split)
    assert len(ds) == length
    img, target = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (8, 8)
    assert all(type(t) is int for t in ds.targets)
    assert set(ds.targets) == set(range(10))
    # Pixels are stretched to the 8-bit range, not left at the raw 0..16.
    assert max(np.asarray(ds[i][0]).max() for i in range(20)) > 200


def test_digits_train_and_val_are_disjoint_parts_of_the_same_set():
    """Validation images are the 297 images after the 1,500 training ones, not a copy of them."""
    train, val = Digits("train"), Digits("val")
    assert not np.array_equal(train.images[:297], val.images)


def test_digits_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="'test'"):
        Digits("test")


# ---------------------------------------------------------------- DigitsDataModule
def test_digits_batches_are_normalised_1x32x32_floats_with_targets():
    """A training batch is (images, targets): (N, 1, 32, 32) floats with mean about 0, int labels."""
    dm = fit_module(DigitsDataModule, batch_size=500)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (500, 1, 32, 32) and images.dtype == torch.float32
    assert abs(images.mean().item()) < 0.3
    assert 0.6 < images.std().item() < 1.5
    assert targets.shape == (500,) and targets.dtype == torch.int64
    assert set(targets.tolist()) <= set(range(10))


def test_digits_default_normalisation_is_the_training_images_statistics():
    """Normalisation defaults to the real mean and std of the digits, so normalised images are centred."""
    pixels = Digits("train").images / 255.0
    dm = DigitsDataModule(**LOADER)
    assert dm.mean == pytest.approx((pixels.mean(),), abs=1e-3)
    assert dm.std == pytest.approx((pixels.std(),), abs=1e-3)


def test_digits_in_chans_3_gives_three_channels():
    dm = fit_module(DigitsDataModule, in_chans=3, batch_size=8)
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def test_non_square_img_size_gives_non_square_train_and_val_batches():
    dm = fit_module(DigitsDataModule, img_size=(32, 48), batch_size=16)
    assert next(iter(dm.train_dataloader()))[0].shape == (16, 1, 32, 48)
    assert next(iter(dm.val_dataloader()))[0].shape == (16, 1, 32, 48)


def test_train_loader_drops_the_last_partial_batch_and_shuffles():
    """Every training batch is full (1500 // 64 of them); the order differs from the dataset's and between epochs."""
    dm = fit_module(DigitsDataModule, batch_size=64)
    loader = dm.train_dataloader()
    assert len(loader) == 1500 // 64
    _, targets = next(iter(loader))
    assert targets.tolist() != Digits("train").targets[:64]
    _, same_epoch = next(iter(loader))
    assert torch.equal(targets, same_epoch)  # the order is a function of (seed, epoch), so a resume can replay it
    loader.sampler.set_epoch(1)  # as the Trainer does at every epoch
    _, next_epoch = next(iter(loader))
    assert not torch.equal(targets, next_epoch)


def test_val_loader_keeps_every_image_in_order():
    dm = fit_module(DigitsDataModule, batch_size=64)
    images, targets = all_batches(dm.val_dataloader())
    assert images.shape[0] == 297
    assert targets.tolist() == Digits("val").targets


# ---------------------------------------------------------------- ImageFolderDataModule
def test_imagenet_style_folders_give_labels_from_class_folders(imagenet_style_root):
    """train/<class>/*.jpg trains and val/<class>/*.png validates, labelled by sorted class folder."""
    dm = fit_module(ImageFolderDataModule, root=imagenet_style_root, img_size=16, batch_size=4)
    images, targets = all_batches(dm.train_dataloader())
    assert images.shape == (12, 3, 16, 16)
    assert sorted(targets.tolist()) == [0] * 6 + [1] * 6
    images, targets = all_batches(dm.val_dataloader())
    assert images.shape == (4, 3, 16, 16)
    assert targets.tolist() == [0, 0, 1, 1]


def test_flat_folder_trains_on_every_image_unlabelled_and_has_no_validation(tmp_path, make_image):
    """A folder of images without train/ is all training data (target -1, nested files too); no val batches."""
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.png")
    make_image(tmp_path / "nested" / "c.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    dm = fit_module(ImageFolderDataModule, root=tmp_path, img_size=16, batch_size=3)
    images, targets = all_batches(dm.train_dataloader())
    assert images.shape == (3, 3, 16, 16)
    assert targets.tolist() == [-1, -1, -1]
    assert list(dm.val_dataloader()) == []


def test_unlabelled_train_folder_beside_a_val_folder(tmp_path, make_image):
    """root/train with loose images (no class folders) is read unlabelled; root/val still validates."""
    for i in range(4):
        make_image(tmp_path / "train" / f"{i}.jpg", seed=i)
    make_image(tmp_path / "val" / "x" / "0.png")
    dm = fit_module(ImageFolderDataModule, root=tmp_path, img_size=16, batch_size=2)
    assert all_batches(dm.train_dataloader())[1].tolist() == [-1] * 4
    assert all_batches(dm.val_dataloader())[1].tolist() == [0]


def test_val_dir_picks_another_validation_folder(tmp_path, make_image):
    """val_dir="test" validates on root/test (the CIFAR-10 JPEG layout); the default "val" would find nothing."""
    for label in ("a", "b"):
        for i in range(3):
            make_image(tmp_path / "train" / label / f"{i}.jpg", seed=i)
        make_image(tmp_path / "test" / label / "0.jpg")
    dm = fit_module(ImageFolderDataModule, root=tmp_path, val_dir="test", img_size=16, batch_size=2)
    assert all_batches(dm.val_dataloader())[1].tolist() == [0, 1]
    default = fit_module(ImageFolderDataModule, root=tmp_path, img_size=16, batch_size=2)
    assert list(default.val_dataloader()) == []


def test_worker_processes_load_the_same_images(imagenet_style_root):
    """Real runs read with DataLoader workers (persistent by default); they must give the main process's batches."""
    kwargs = {"root": imagenet_style_root, "img_size": 16, "batch_size": 2, "pin_memory": False}
    in_process = ImageFolderDataModule(num_workers=0, **kwargs)
    in_workers = ImageFolderDataModule(num_workers=2, **kwargs)
    for dm in (in_process, in_workers):
        dm.setup("fit")
    assert in_workers.val_dataloader().persistent_workers
    expected, got = all_batches(in_process.val_dataloader()), all_batches(in_workers.val_dataloader())
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert all_batches(in_workers.train_dataloader())[0].shape == (12, 3, 16, 16)


MIXED_MODES = {
    "gray.png": "L",
    "palette.png": "P",
    "alpha.png": "RGBA",
    "cmyk.jpg": "CMYK",
    "sixteen.png": "I;16",
    "anim.gif": "P",
}


@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_image_mode_on_disk_comes_out_with_in_chans_channels(tmp_path, make_image, in_chans):
    """Grayscale, palette, RGBA, CMYK JPEG, 16-bit PNG and GIF files all batch together with in_chans channels."""
    for i, (name, mode) in enumerate(MIXED_MODES.items()):
        path = make_image(tmp_path / name, mode=mode, seed=i)
        assert Image.open(path).mode == ("P" if name.endswith(".gif") else mode)
    dm = fit_module(ImageFolderDataModule, root=tmp_path, in_chans=in_chans, img_size=16, batch_size=6)
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (6, in_chans, 16, 16)
    assert torch.isfinite(images).all()


def test_16_bit_png_keeps_its_contrast(tmp_path, make_image):
    """A 16-bit grayscale PNG is scaled to 8 bits, not clipped at 255 (which would turn it all white)."""
    make_image(tmp_path / "train" / "0.png")
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    (tmp_path / "val").mkdir()
    Image.fromarray(ramp).save(tmp_path / "val" / "ramp.png")
    with pytest.warns(UserWarning, match="ramp.png is a 16-bit image"):
        dm = ImageFolderDataModule(tmp_path, **LOADER, img_size=32, in_chans=1, batch_size=1, eval_crop_ratio=1.0)
    dm.setup("validate")
    img = next(iter(dm.val_dataloader()))[0][0, 0] * dm.std[0] + dm.mean[0]
    assert img[:, :8].mean() < 0.2
    assert img[:, -8:].mean() > 0.8


def dim_16_bit_folder(root) -> None:
    """train/ and val/ of 64x64 16-bit PNGs (PIL mode "I;16") as a dim microscope writes them: values 0..4000."""
    ramp = np.linspace(0, 4000, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    for split, count in (("train", 2), ("val", 1)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.roll(ramp, i, axis=1)).save(root / split / f"{i}.png")
    assert Image.open(root / "val" / "0.png").mode == "I;16"


def test_a_dim_16_bit_png_keeps_its_grey_levels_when_read_as_an_array(tmp_path):
    """file_kind: array reads the values themselves (per-band statistics); image reading keeps 16 levels and says so."""
    dim_16_bit_folder(tmp_path)
    args = dict(**LOADER, img_size=64, in_chans=1, batch_size=1, eval_crop_ratio=1.0)
    full = ImageFolderDataModule(tmp_path, file_kind="array", **args)
    full.setup("validate")
    values = next(iter(full.val_dataloader()))[0][0, 0] * full.std[0] + full.mean[0]
    assert torch.unique(values.round()).numel() > 1000
    assert values.min().round() == 0 and values.max().round() == 4000
    assert full.mean[0] == pytest.approx(2000, rel=0.01)  # the band's own statistics, in its own units

    with pytest.warns(UserWarning, match=r"0\.png is a 16-bit image: it is read with 8 bits") as record:
        reduced = ImageFolderDataModule(tmp_path, **args)
    assert "data.init_args.file_kind: array" in str(record[0].message)
    reduced.setup("validate")
    values = next(iter(reduced.val_dataloader()))[0][0, 0] * reduced.std[0] + reduced.mean[0]
    assert torch.unique((values * 255).round()).numel() <= 16  # 4000 >> 8 = 15


def test_16_bit_images_are_reduced_alike_in_every_decode_mode(tmp_path):
    """decode: tensor (and gpu, whose workers decode PNGs the same way) keeps the PIL path's 8 bits, and warns."""
    dim_16_bit_folder(tmp_path)
    path = str(tmp_path / "val" / "0.png")
    with pytest.warns(UserWarning, match="16-bit image"):
        pil = np.asarray(ReadImage()(path).convert("L"))
    with pytest.warns(UserWarning, match="16-bit image"):
        tensor = ReadImageUint8(1)(path)
    assert tensor.dtype == torch.uint8 and np.array_equal(tensor[0].numpy(), pil) and pil.max() == 4000 >> 8

    with pytest.warns(UserWarning, match="16-bit image"):
        dm = ImageFolderDataModule(tmp_path, decode="tensor", **LOADER, img_size=32, in_chans=1, batch_size=2)
    dm.setup("fit")
    imgs, targets = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert imgs.dtype == torch.float32 and imgs.shape == (2, 1, 32, 32)


def test_missing_root_raises_file_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        ImageFolderDataModule(missing, **LOADER)


def test_folder_without_images_raises_file_not_found_when_made(tmp_path):
    """Found when the DataModule is made (the CLI turns it into one line), naming the folder and the setting."""
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=f"found under '{tmp_path}' \\(data.init_args.root\\)"):
        ImageFolderDataModule(tmp_path, **LOADER)


def test_empty_folder_raises_file_not_found_when_made(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image or array files"):
        ImageFolderDataModule(tmp_path, **LOADER)


def test_empty_class_folder_is_named(tmp_path, make_image):
    make_image(tmp_path / "cat" / "0.jpg")
    (tmp_path / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match="class folder .*dog.* holds no image or array file"):
        ImageFolderDataModule(tmp_path, **LOADER)


def test_empty_validation_folder_is_named(tmp_path, make_image):
    make_image(tmp_path / "train" / "0.jpg")
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="found under .*val'"):
        ImageFolderDataModule(tmp_path, **LOADER)


@pytest.mark.parametrize("in_chans", [2, 6])
def test_image_files_with_another_channel_count_point_to_arrays(imagenet_style_root, in_chans):
    with pytest.raises(ValueError, match=f"1, 3 or 4 channels, got in_chans={in_chans}") as error:
        ImageFolderDataModule(imagenet_style_root, **LOADER, in_chans=in_chans)
    message = str(error.value)
    assert str(imagenet_style_root) in message and "data.init_args.in_chans" in message and ".npy" in message


def test_batch_size_larger_than_the_training_set_is_rejected(imagenet_style_root):
    """Training would otherwise drop every batch and run zero steps."""
    dm = ImageFolderDataModule(imagenet_style_root, **LOADER, batch_size=13)
    with pytest.raises(ValueError, match="batch_size=13"):
        dm.setup("fit")
    fit_module(ImageFolderDataModule, root=imagenet_style_root, batch_size=12)


def test_batch_size_zero_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        ImageFolderDataModule(tmp_path, **LOADER, batch_size=0)


# ---------------------------------------------------------------- transforms
@pytest.mark.parametrize(("size", "image_size"), [((32, 32), (8, 8)), ((32, 48), (100, 60)), ((224, 160), (50, 300))])
def test_pretrain_transform_gives_exactly_the_requested_height_and_width(size, image_size):
    transform = pretrain_transform(size, 3, (0.5,) * 3, (0.25,) * 3)
    for seed in range(5):
        torch.manual_seed(seed)
        assert transform(Image.new("RGB", image_size)).shape == (3, *size)


def test_eval_transform_resizes_then_centre_crops_like_the_paper():
    """crop_ratio 0.875 to 224 is Resize(256) + CenterCrop(224), bicubic, as in the official evaluation."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    got = eval_transform((224, 224), 3, (0.0,) * 3, (1.0,) * 3, crop_ratio=0.875)(img)
    by_hand = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])(
        img
    )
    assert torch.equal(got, by_hand)


def test_eval_transform_normalises_with_the_given_statistics():
    img = Image.new("RGB", (32, 32), (255, 0, 128))
    out = eval_transform((32, 32), 3, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5), crop_ratio=1.0)(img)
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, -2.0, 128 / 255 * 2 - 1]), atol=1e-5)


def test_eval_transform_to_a_non_square_size_does_not_pad():
    """A non-square eval crop is cut from the image, never filled with black borders."""
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    out = eval_transform((32, 48), 3, (0.0,) * 3, (1.0,) * 3, crop_ratio=1.0)(white)
    assert out.shape == (3, 32, 48)
    assert out.min() > 0.99


def test_to_channels_rejects_two_channels_naming_the_value():
    with pytest.raises(ValueError, match="in_chans=2"):
        ToChannels(2)


@pytest.mark.parametrize(("in_chans", "mode"), [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_to_channels_converts_any_mode(in_chans, mode):
    for source in ("L", "P", "RGB", "RGBA", "CMYK"):
        assert ToChannels(in_chans)(Image.new(source, (4, 4))).mode == mode


# ---------------------------------------------------------------------------- tensor decoding
def test_tensor_decode_path_gives_the_same_batches_as_pil_up_to_resampling(imagenet_style_root):
    """decode="tensor": uint8 batches from the workers, normalised floats after the transfer to the device."""
    kwargs = dict(root=imagenet_style_root, img_size=32, batch_size=4, num_workers=0, eval_crop_ratio=1.0)
    pil = ImageFolderDataModule(**kwargs)
    tensor = ImageFolderDataModule(decode="tensor", **kwargs)
    for dm in (pil, tensor):
        dm.setup("fit")
    raw_imgs, raw_targets = next(iter(tensor.val_dataloader()))
    assert raw_imgs.dtype == torch.uint8 and raw_imgs.shape == (4, 3, 32, 32)
    imgs, targets = tensor.on_after_batch_transfer((raw_imgs, raw_targets), 0)
    ref_imgs, ref_targets = next(iter(pil.val_dataloader()))
    assert imgs.dtype == torch.float32 and torch.equal(targets, ref_targets)
    # the same pixels up to the two libraries' bicubic resampling and JPEG decoders
    assert (imgs - ref_imgs).abs().mean() < 0.05
    train_imgs, _ = next(iter(tensor.train_dataloader()))
    assert train_imgs.dtype == torch.uint8 and train_imgs.shape == (4, 3, 32, 32)


def test_tensor_decode_rejects_unknown_modes(imagenet_style_root):
    with pytest.raises(ValueError, match="decode must be 'pil', 'tensor' or 'gpu', got 'nvjpeg'"):
        ImageFolderDataModule(root=imagenet_style_root, decode="nvjpeg")


def _first_train_batch(root, **kwargs) -> torch.Tensor:
    """The first training batch of a tensor-decoding DataModule, as it is after the transfer to the device."""
    args = dict(root=root, img_size=32, batch_size=4, num_workers=0, decode="tensor", seed=0)
    dm = ImageFolderDataModule(**{**args, **kwargs})
    dm.setup("fit")
    imgs, targets = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer((imgs, targets), 0)[0]


@pytest.mark.parametrize("in_chans", [1, 3])
def test_tensor_decode_finetune_batches_are_augmented_normalised_floats(imagenet_style_root, in_chans):
    dm = ImageFolderDataModule(root=imagenet_style_root, decode="tensor", augmentation="finetune", in_chans=in_chans)
    steps = {type(step): step for step in dm.train_transform.transforms}
    assert {v2.RandomResizedCrop, v2.RandAugment, v2.Normalize, v2.RandomErasing} <= set(steps)
    assert steps[v2.RandomErasing].p == 0.25 and steps[v2.RandomErasing].value is None  # None: value="random"
    assert steps[v2.RandomResizedCrop].interpolation == v2.InterpolationMode.BICUBIC

    dm = ImageFolderDataModule(
        root=imagenet_style_root, img_size=32, batch_size=4, num_workers=0, decode="tensor", in_chans=in_chans,
        augmentation="finetune", seed=0,
    )  # fmt: skip
    dm.setup("fit")
    imgs, targets = next(iter(dm.train_dataloader()))
    assert imgs.dtype == torch.float32 and imgs.shape == (4, in_chans, 32, 32)
    assert imgs.min() < 0  # normalised in the workers: no uint8 crossed
    assert dm.on_after_batch_transfer((imgs, targets), 0)[0] is imgs  # and not normalised twice
    finetune = _first_train_batch(imagenet_style_root, in_chans=in_chans, augmentation="finetune")
    torch.testing.assert_close(finetune, imgs, rtol=0, atol=0)  # the same data seed, the same batch
    assert not torch.equal(
        finetune, _first_train_batch(imagenet_style_root, in_chans=in_chans, augmentation="finetune", seed=1)
    )
    pretrain = _first_train_batch(imagenet_style_root, in_chans=in_chans)
    assert pretrain.shape == finetune.shape and (pretrain - finetune).abs().mean() > 0.1


def test_tensor_decode_finetune_random_erasing_replaces_a_rectangle(imagenet_style_root):
    kept = _first_train_batch(imagenet_style_root, augmentation="finetune", random_erasing=0.0)
    # Erasing is the last step: with the same per-sample seeds everything before it is the same.
    erased = _first_train_batch(imagenet_style_root, augmentation="finetune", random_erasing=1.0)
    for before, after in zip(kept, erased, strict=True):
        changed = (before != after).all(dim=0)
        rows, cols = changed.any(dim=1).nonzero()[:, 0], changed.any(dim=0).nonzero()[:, 0]
        assert len(rows) and len(cols)
        box = torch.zeros_like(changed)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(changed, box)  # one filled rectangle, and nothing outside it moved
        assert torch.equal(before[:, ~box], after[:, ~box])
        assert 0.5 < after[:, box].std() < 1.5  # per-pixel N(0, 1) noise in normalised units, not a constant


def test_finetune_augmentation_rejects_four_channels_for_randaugment(imagenet_style_root):
    with pytest.raises(ValueError, match="RandAugment.*1 or 3 channels, got in_chans=4"):
        ImageFolderDataModule(root=imagenet_style_root, decode="tensor", augmentation="finetune", in_chans=4)


# ---------------------------------------------------------------------------- classes
def test_num_classes_is_what_the_data_knows():
    """The class count a classifier's head is checked against; None where the data has no labels or does not say."""
    assert DigitsDataModule(**LOADER).num_classes == 10
    assert CIFAR10DataModule(**LOADER).num_classes == 10 and CIFAR100DataModule(**LOADER).num_classes == 100
    assert STL10DataModule(**LOADER).num_classes == 10
    assert MAEDataModule(**LOADER).num_classes is None


def test_a_folder_knows_its_class_folders(imagenet_style_root, tmp_path, make_image):
    assert ImageFolderDataModule(imagenet_style_root, **LOADER).num_classes == 2
    for i in range(3):
        make_image(tmp_path / "flat" / f"{i}.jpg", seed=i)
    assert ImageFolderDataModule(tmp_path / "flat", **LOADER).num_classes is None


class RecordTargets(LightningModule):
    """Records the targets of every validation batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def validation_step(self, batch, batch_idx):
        self.seen += batch[1].tolist()


def validated_targets(dm, limit_val_batches) -> list[int]:
    model = RecordTargets()
    trainer = Trainer(
        accelerator="cpu", limit_val_batches=limit_val_batches, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(model, datamodule=dm, verbose=False)
    return model.seen


def class_sorted_folder(root, make_image, classes: int = 4, per_class: int = 6) -> None:
    """root/train and root/val, each with class folders 0..classes-1 of real JPEGs, listed class after class."""
    for split in ("train", "val"):
        for label in range(classes):
            for i in range(per_class):
                make_image(root / split / f"class_{label}" / f"{i}.jpg", size=(12, 12), seed=100 * label + i)


def test_a_limited_validation_of_a_class_sorted_folder_covers_the_classes(tmp_path, make_image):
    """limit_val_batches reads class-interleaved batches (the same ones every time); a full validation is unchanged."""
    class_sorted_folder(tmp_path, make_image)
    dm = ImageFolderDataModule(tmp_path, **LOADER, img_size=8, batch_size=4, seed=3)
    assert validated_targets(dm, 1.0) == [label for label in range(4) for _ in range(6)]
    first = validated_targets(dm, 1)
    assert sorted(first) == [0, 1, 2, 3]
    assert validated_targets(dm, 0.5)[:4] == first  # a fixed order: the same subset, grown by more batches
    assert sorted(validated_targets(dm, 0.5)) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_a_limited_validation_too_small_to_cover_the_classes_says_how_many_it_covers(tmp_path, make_image):
    class_sorted_folder(tmp_path, make_image)
    dm = ImageFolderDataModule(tmp_path, **LOADER, img_size=8, batch_size=2)
    with pytest.warns(UserWarning, match=r"limit_val_batches=1\): they cover 2 of the 4 classes"):
        assert sorted(validated_targets(dm, 1)) == [0, 1]


def test_a_limited_validation_of_unlabelled_files_keeps_their_order(tmp_path, make_image):
    for i in range(8):
        make_image(tmp_path / "train" / f"{i}.jpg", size=(12, 12), seed=i)
        make_image(tmp_path / "val" / f"{i}.jpg", size=(12, 12), seed=50 + i)
    dm = ImageFolderDataModule(tmp_path, **LOADER, img_size=8, batch_size=2)
    model = RecordTargets()
    trainer = Trainer(accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert trainer.val_dataloaders.dataset is dm.val_set and model.seen == [-1, -1]
