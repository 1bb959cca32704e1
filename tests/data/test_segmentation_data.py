"""Image + mask pairs for segmentation: joint augmentation, padded whole-image batches, layouts, bad input, resume,
multi-band arrays, mask files and images to predict, on real files written to the test's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae_lightning.data.datasets import UnreadableImageError
from mae_lightning.data.segmentation import (
    BadMaskError,
    MaskLabels,
    PadToLargest,
    SegmentationDataModule,
    list_pairs,
    read_mask,
)

LOADER = {"num_workers": 0, "pin_memory": False}
NUM_CLASSES = 5
IGNORE = 255
SEEDS = {"train": 500, "val": 300}  # pair_folders' pair i of a split: random_labels(size, SEEDS[split] + i)


# --------------------------------------------------------------------------- files
def write_rgb(path: Path, pixels: np.ndarray) -> Path:
    """(H, W, 3) uint8 as an RGB image; the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


def write_mask(path: Path, labels: np.ndarray) -> Path:
    """(H, W) labels as an 8-bit PNG (mode L), a 16-bit PNG (``.png`` with uint16 labels) or a ``.npy``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, labels)
    else:
        Image.fromarray(labels).save(path)
    return path


def random_labels(size: tuple[int, int], seed: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(H, W) uint8 labels in [0, num_classes), with some ignore-index pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size, dtype=np.uint8)
    labels[0, :3] = IGNORE
    return labels


def write_pair(
    images: Path, masks: Path, stem: str, size: tuple[int, int] = (24, 32), seed: int = 0, suffix: str = ".png"
) -> tuple[Path, Path]:
    """A random RGB image of (H, W) ``size`` and its random mask, named ``stem``."""
    rng = np.random.default_rng(seed)
    image = write_rgb(images / f"{stem}{suffix}", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return image, write_mask(masks / f"{stem}.png", random_labels(size, seed))


def pair_folders(root: Path, train: int = 6, val: int = 3, size: tuple[int, int] = (24, 32)) -> Path:
    """``root/{train,val}/{images,masks}``: PNG images in train, JPEG in val, 8-bit PNG masks."""
    for split, count, suffix in (("train", train, ".png"), ("val", val, ".jpg")):
        for i in range(count):
            seed = SEEDS[split] + i
            write_pair(root / split / "images", root / split / "masks", f"{i}", size, seed=seed, suffix=suffix)
    return root


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def datamodule(root: Path, **kwargs) -> SegmentationDataModule:
    args = dict(num_classes=NUM_CLASSES, img_size=(16, 16), batch_size=2, **LOADER)
    return SegmentationDataModule(root, **{**args, **kwargs})


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- 1. joint augmentation
BLOCK = 8


def block_label(block_row, block_col):
    return (block_row + block_col) % NUM_CLASSES


@pytest.fixture
def coordinate_pair(tmp_path: Path) -> Path:
    """One 48x64 training pair: R = row * 4, G = col * 4, B = 128; the mask's label a function of 8x8 blocks."""
    rows, cols = np.meshgrid(np.arange(48), np.arange(64), indexing="ij")
    pixels = np.stack([rows * 4, cols * 4, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    write_rgb(tmp_path / "data" / "train" / "images" / "coords.png", pixels)
    write_mask(tmp_path / "data" / "train" / "masks" / "coords.png", block_label(rows // 8, cols // 8).astype(np.uint8))
    return tmp_path / "data"


def crop_sample(dm: SegmentationDataModule, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return dm.train_set[0]


def test_a_training_crop_keeps_every_image_pixel_on_its_own_label(coordinate_pair):
    dm = datamodule(coordinate_pair, img_size=(24, 40), color_jitter=0.0, batch_size=1)
    dm.setup("fit")
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    flips, crops = set(), []
    for seed in range(12):
        image, mask = crop_sample(dm, seed)
        assert image.shape == (3, 24, 40) and image.dtype == torch.float32
        assert mask.shape == (24, 40) and mask.dtype == torch.int64
        values = (image * std + mean) * 255  # the uint8 values, resampled
        assert torch.allclose(values[2], torch.full_like(values[2], 128), atol=0.01)  # no colour change
        # Each output pixel's source position, in pixels from the image's top-left edge.
        rows, cols = values[0] / 4 + 0.5, values[1] / 4 + 0.5
        row_in_block, col_in_block = rows % BLOCK, cols % BLOCK
        inside = (
            (row_in_block > 1.5) & (row_in_block < BLOCK - 1.5) & (col_in_block > 1.5) & (col_in_block < BLOCK - 1.5)
        )
        assert inside.float().mean() > 0.2
        expected = block_label((rows // BLOCK).long(), (cols // BLOCK).long())
        assert torch.equal(mask[inside], expected[inside]), f"seed {seed}"
        flips.add(bool(cols[:, -1].mean() < cols[:, 0].mean()))
        crops.append(float(rows.max() - rows.min()))
    assert flips == {True, False}  # some samples flipped, some not
    assert min(crops) < 30 < 40 < max(crops)  # crops of part of the image and of nearly all of its 48 rows


def test_colour_jitter_changes_the_image_and_leaves_the_mask(coordinate_pair):
    plain = datamodule(coordinate_pair, img_size=(24, 40), color_jitter=0.0, batch_size=1)
    jittered = datamodule(coordinate_pair, img_size=(24, 40), color_jitter=0.4, batch_size=1)
    plain.setup("fit")
    jittered.setup("fit")
    for seed in range(4):
        (image, mask), (jittered_image, jittered_mask) = crop_sample(plain, seed), crop_sample(jittered, seed)
        assert torch.equal(mask, jittered_mask)
        assert not torch.allclose(image, jittered_image, atol=0.05)


# --------------------------------------------------------------------------- 2. evaluation: whole images, padded
def test_evaluation_pads_images_of_two_sizes_to_the_largest_and_carries_indices_and_sizes(tmp_path):
    root = pair_folders(tmp_path / "data", train=2, val=0)
    big_image, _ = write_pair(root / "val" / "images", root / "val" / "masks", "a_big", size=(24, 32), seed=1)
    small_image, _ = write_pair(root / "val" / "images", root / "val" / "masks", "b_small", size=(18, 20), seed=2)
    dm = datamodule(root)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 1
    images, masks, indices, sizes = batches[0]
    assert sizes.tolist() == [[24, 32], [18, 20]]  # each image's own (height, width)
    assert images.shape == (2, 3, 24, 32) and masks.shape == (2, 24, 32) and masks.dtype == torch.int64
    assert indices.tolist() == [0, 1]
    assert [Path(dm.val_set.samples[i][0]) for i in indices] == [big_image, small_image]
    # The whole image, normalised, at the top left; the padding 0 (images) and the ignore index (masks).
    pixels = torch.from_numpy(pixels_of(small_image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    torch.testing.assert_close(images[1, :, :18, :20], (pixels - mean) / std)
    assert torch.equal(masks[1, :18, :20], torch.from_numpy(random_labels((18, 20), seed=2)).long())
    assert (images[1, :, 18:] == 0).all() and (images[1, :, :, 20:] == 0).all()
    assert (masks[1, 18:] == IGNORE).all() and (masks[1, :, 20:] == IGNORE).all()
    assert torch.equal(masks[0], torch.from_numpy(random_labels((24, 32), seed=1)).long())


def test_pad_to_largest_stacks_samples_of_one_size_as_they_are():
    image, mask = torch.randn(3, 4, 5), torch.randint(0, 3, (4, 5))
    images, masks = PadToLargest(IGNORE)([(image, mask), (image + 1, mask)])
    assert torch.equal(images, torch.stack([image, image + 1])) and torch.equal(masks, torch.stack([mask, mask]))


# --------------------------------------------------------------------------- 3. layouts
def test_ade20k_layout_with_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 0, IGNORE]], dtype=np.uint8)
    for split in ("training", "validation"):
        for i in range(2):
            write_rgb(root / "images" / split / f"ADE_{i}.jpg", np.full((3, 4, 3), 60 * i, dtype=np.uint8))
            write_mask(root / "annotations" / split / f"ADE_{i}.png", raw)
    dm = datamodule(root, num_classes=3, layout="ade20k", reduce_zero_label=True)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (2, 2)
    assert Path(dm.val_set.samples[1][0]) == root / "images" / "validation" / "ADE_1.jpg"
    # 0 (ADE20K's "other") is ignored, k > 0 is class k - 1; a pixel already at the ignore index stays there.
    expected = torch.tensor([[IGNORE, 0, 1, 2], [2, 1, 0, IGNORE], [0, 0, IGNORE, IGNORE]])
    image, mask, index = dm.val_set[1]
    assert image.shape == (3, 3, 4) and index == 1 and torch.equal(mask, expected)
    # Label 4 becomes 3, outside the 3 classes.
    raw[0, 0] = 4
    write_mask(root / "annotations" / "training" / "ADE_1.png", raw)
    with pytest.raises(BadMaskError, match=r"ADE_1\.png: labels \[3\] \(after reduce_zero_label\) are outside \[0, 3\)") as err:
        dm.train_set[1]
    one_line(err)


def test_without_reduce_zero_label_the_labels_are_read_as_they_are(tmp_path):
    root = pair_folders(tmp_path / "data")
    dm = datamodule(root)
    dm.setup("fit")
    for index in range(3):
        _, mask, _ = dm.val_set[index]
        assert torch.equal(mask, torch.from_numpy(random_labels((24, 32), seed=SEEDS["val"] + index)).long())


def test_folder_names_are_configurable(tmp_path):
    root = tmp_path / "data"
    for split, count in (("training_set", 4), ("holdout", 2)):
        for i in range(count):
            write_pair(root / split / "rgb", root / split / "labels", f"{i}", seed=i)
    dm = datamodule(root, train_dir="training_set", val_dir="holdout", images_dir="rgb", masks_dir="labels")
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (4, 2)
    assert dm.train_set.samples[3] == (str(root / "training_set/rgb/3.png"), str(root / "training_set/labels/3.png"))
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16)


def test_a_missing_masks_folder_is_named(tmp_path):
    root = pair_folders(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=r"masks folder .*train/annotations.* does not exist") as err:
        datamodule(root, masks_dir="annotations")
    one_line(err)


def test_list_pairs_matches_files_by_stem(tmp_path):
    write_pair(tmp_path / "img", tmp_path / "lbl", "b", suffix=".jpg")
    write_pair(tmp_path / "img", tmp_path / "lbl", "a")
    (tmp_path / "lbl" / "notes.txt").write_text("not a mask")
    assert list_pairs(tmp_path / "img", tmp_path / "lbl") == [
        (str(tmp_path / "img" / "a.png"), str(tmp_path / "lbl" / "a.png")),
        (str(tmp_path / "img" / "b.jpg"), str(tmp_path / "lbl" / "b.png")),
    ]


# --------------------------------------------------------------------------- 4. bad input
def test_an_image_without_its_mask_stops_naming_it(tmp_path):
    root = pair_folders(tmp_path / "data")
    (root / "train" / "masks" / "4.png").unlink()
    with pytest.raises(ValueError, match=r"1 file\(s\) have no partner .*train/masks.* \(4\.png\)") as err:
        datamodule(root)
    one_line(err)


def test_a_mask_without_its_image_stops_naming_it(tmp_path):
    root = pair_folders(tmp_path / "data")
    write_mask(root / "val" / "masks" / "stray.png", random_labels((24, 32), seed=0))
    with pytest.raises(ValueError, match=r"1 file\(s\) have no partner .*val/images.* \(stray\.png\)") as err:
        datamodule(root)
    one_line(err)


def test_a_mask_of_another_size_stops_naming_both_files(tmp_path):
    root = pair_folders(tmp_path / "data")
    # A later pair: found when it is read.
    write_mask(root / "train" / "masks" / "3.png", random_labels((24, 30), seed=0))
    dm = datamodule(root)
    dm.setup("fit")
    with pytest.raises(
        BadMaskError, match=r"masks/3\.png is 30x24 pixels but its image .*images/3\.png is 32x24"
    ) as err:
        dm.train_set[3]
    one_line(err)
    # The first pair: found when the DataModule is made.
    write_mask(root / "val" / "masks" / "0.png", random_labels((20, 32), seed=0))
    with pytest.raises(
        BadMaskError, match=r"val/masks/0\.png is 32x20 pixels but its image .*val/images/0\.jpg"
    ) as err:
        datamodule(root)
    one_line(err)


def test_labels_outside_the_classes_stop_naming_the_file_and_the_values(tmp_path):
    root = pair_folders(tmp_path / "data")
    labels = random_labels((24, 32), seed=0)
    labels[5, 5], labels[6, 6] = 9, 7
    write_mask(root / "train" / "masks" / "2.png", labels)
    dm = datamodule(root)
    dm.setup("fit")
    with pytest.raises(BadMaskError, match=r"train/masks/2\.png: labels \[7, 9\] are outside \[0, 5\)") as err:
        dm.train_set[2]
    assert "ignore index 255" in one_line(err)
    write_mask(root / "train" / "masks" / "0.png", labels)
    with pytest.raises(BadMaskError, match=r"train/masks/0\.png: labels \[7, 9\]") as err:
        datamodule(root)
    one_line(err)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ignore_index": 3}, r"ignore_index=3 is one of the 5 classes"),
        ({"ignore_index": 0}, r"ignore_index=0 is one of the 5 classes"),
        ({"class_names": ["road", "car"]}, r"class_names has 2 names for num_classes=5"),
        ({"layout": "cityscapes"}, r"layout must be 'folders' or 'ade20k', got 'cityscapes'"),
        ({"num_classes": 0}, r"num_classes must be >= 1"),
        ({"color_jitter": -0.1}, r"color_jitter must be >= 0"),
    ],
)
def test_bad_settings_stop_in_one_line(tmp_path, kwargs, message):
    root = pair_folders(tmp_path / "data", train=2, val=1)
    with pytest.raises(ValueError, match=message) as err:
        datamodule(root, **kwargs)
    one_line(err)


def test_class_names_default_to_their_index(tmp_path):
    root = pair_folders(tmp_path / "data", train=2, val=1)
    assert datamodule(root).class_names == [f"class_{i}" for i in range(NUM_CLASSES)]
    names = ["sky", "road", "car", "tree", "person"]
    dm = datamodule(root, class_names=names)
    assert dm.class_names == names and dm.num_classes == NUM_CLASSES


def test_an_unreadable_image_among_good_ones_is_skipped_named_and_counted(tmp_path):
    root = pair_folders(tmp_path / "data")
    broken = root / "train" / "images" / "0.png"  # the first pair: the check when made reads on to the next
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    (root / "train" / "images" / "3.png").write_bytes(np.random.default_rng(0).bytes(500))
    dm = datamodule(root, max_bad_image_fraction=0.5)
    dm.setup("fit")
    with pytest.warns(UserWarning) as record:
        batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for images, masks in batches:
        assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16) and torch.isfinite(images).all()
    assert dm.train_set.num_skipped == 2
    named = sorted(str(w.message).split("skipping unreadable image ")[1].split(":")[0] for w in record
                   if "skipping unreadable" in str(w.message))  # fmt: skip
    assert named == [str(broken), str(root / "train" / "images" / "3.png")]


def test_too_many_unreadable_images_stop_with_the_setting_named(tmp_path):
    root = pair_folders(tmp_path / "data")
    (root / "train" / "images" / "3.png").write_bytes(b"not an image")
    dm = datamodule(root)  # max_bad_image_fraction 0.01: 1 of 6 is too many
    dm.setup("fit")
    too_many = pytest.raises(RuntimeError, match=r"1 of 6 image files are unreadable .*max_bad_image_fraction=0\.01")
    with too_many, pytest.warns(UserWarning, match=r"3\.png"):
        list(dm.train_dataloader())


def test_no_readable_pair_stops_when_made(tmp_path):
    root = pair_folders(tmp_path / "data", train=2, val=1)
    for i in range(2):
        (root / "train" / "images" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 2 image/mask pairs can be read \(first: .*train/images/0\.png"):
        datamodule(root)


# --------------------------------------------------------------------------- 5. resume mid-epoch
def test_a_resumed_epoch_yields_exactly_the_batches_left(tmp_path):
    root = pair_folders(tmp_path / "data", train=8, val=1)
    dm = datamodule(root, seed=7)
    dm.setup("fit")
    assert dm.trainer is None
    epoch = list(dm.train_dataloader())
    assert len(epoch) == 4
    again = list(dm.train_dataloader())  # same seed, same epoch: the same crops in the same order
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch, again, strict=True))
    resumed = datamodule(root, seed=0)
    resumed.setup("fit")
    resumed.load_state_dict({"seed": 7, "epoch": 0, "batches_done": 2})
    rest = list(resumed.train_dataloader())
    assert len(rest) == 2
    for (images, masks), (expected_images, expected_masks) in zip(rest, epoch[2:], strict=True):
        assert torch.equal(images, expected_images) and torch.equal(masks, expected_masks)
    # Only the interrupted epoch starts late; the next loader reads the whole epoch again.
    assert len(list(resumed.train_dataloader())) == 4


# --------------------------------------------------------------------------- 6. multi-band arrays
def band_pairs(
    root: Path, split: str, count: int, bands: int = 5, size: tuple[int, int] = (24, 32)
) -> list[np.ndarray]:
    """``count`` (bands, H, W) float32 .npy images, band b around 100 * (b + 1), with random PNG masks."""
    arrays = []
    for i in range(count):
        rng = np.random.default_rng(1000 * len(split) + i)
        scale = np.arange(1, bands + 1, dtype=np.float32)[:, None, None]
        array = rng.normal(100 * scale, 10 * scale, (bands, *size)).astype(np.float32)
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        np.save(root / split / "images" / f"{i}.npy", array)
        write_mask(root / split / "masks" / f"{i}.png", random_labels(size, seed=i))
        arrays.append(array)
    return arrays


def test_multi_band_arrays_are_normalised_per_band_with_statistics_of_the_training_files(tmp_path):
    root = tmp_path / "data"
    train = band_pairs(root, "train", 6)
    band_pairs(root, "val", 3)
    dm = datamodule(root, in_chans=5)
    dm.setup("fit")
    assert dm.file_kind == "array" and dm.mean is None
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 5, 16, 16) and images.dtype == torch.float32
    assert masks.shape == (2, 16, 16) and masks.dtype == torch.int64
    pixels = np.stack(train).astype(np.float64).transpose(1, 0, 2, 3).reshape(5, -1)
    assert len(dm.mean) == 5 and dm.mean == pytest.approx(pixels.mean(axis=1), rel=1e-6)
    assert dm.std == pytest.approx(pixels.std(axis=1), rel=1e-5)
    assert abs(float(images.mean())) < 0.5 and images.abs().max() < 6  # the bands' levels (100 to 500) are gone
    val_images, val_masks, indices, sizes = next(iter(dm.val_dataloader()))
    assert val_images.shape == (2, 5, 24, 32) and indices.tolist() == [0, 1] and sizes.tolist() == [[24, 32]] * 2
    first = torch.from_numpy(np.load(root / "val" / "images" / "0.npy"))
    mean, std = torch.tensor(dm.mean).view(5, 1, 1), torch.tensor(dm.std).view(5, 1, 1)
    torch.testing.assert_close(val_images[0], (first - mean) / std)
    assert torch.equal(val_masks[0], torch.from_numpy(random_labels((24, 32), seed=0)).long())


def test_an_array_of_another_band_count_stops_when_made_naming_it(tmp_path):
    root = tmp_path / "data"
    band_pairs(root, "train", 3, bands=4)
    with pytest.raises(ValueError, match=r"train/images/0\.npy has 4 bands, but data.init_args.in_chans=5") as err:
        datamodule(root, in_chans=5)
    one_line(err)


# --------------------------------------------------------------------------- 7. mask files
def palette_png(path: Path, labels: np.ndarray) -> Path:
    img = Image.frombytes("P", labels.shape[::-1], labels.astype(np.uint8).tobytes())
    img.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    img.save(path)
    return path


def test_masks_of_every_kind_read_the_same_labels(tmp_path):
    labels = random_labels((6, 7), seed=3)
    eight = write_mask(tmp_path / "eight.png", labels)
    sixteen = write_mask(tmp_path / "sixteen.png", labels.astype(np.uint16))
    array = write_mask(tmp_path / "array.npy", labels.astype(np.int32))
    palette = palette_png(tmp_path / "palette.png", labels)
    with Image.open(eight) as a, Image.open(sixteen) as b, Image.open(palette) as c:
        assert (a.mode, b.mode, c.mode) == ("L", "I;16", "P")
    expected = torch.from_numpy(labels).long()
    for path in (eight, sixteen, array, palette):
        mask = read_mask(str(path))
        assert mask.dtype == torch.int64 and torch.equal(mask, expected), path.name


def test_a_16_bit_mask_keeps_labels_above_255(tmp_path):
    labels = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    assert read_mask(str(write_mask(tmp_path / "wide.png", labels))).tolist() == [[0, 300], [1000, 65535]]


def test_an_rgb_mask_is_refused_as_not_one_label_per_pixel(tmp_path):
    path = write_rgb(tmp_path / "colours.png", np.zeros((4, 5, 3), dtype=np.uint8))
    with pytest.raises(
        UnreadableImageError, match=r"colours\.png: .*a mask is one label per pixel, got an image of mode RGB"
    ):
        read_mask(str(path))
    # Colour-coded masks throughout: the DataModule stops when made.
    root = pair_folders(tmp_path / "data", train=2, val=1)
    for i in range(2):
        write_rgb(root / "train" / "masks" / f"{i}.png", np.zeros((24, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="a mask is one label per pixel") as err:
        datamodule(root)
    one_line(err)


def test_a_mask_that_is_not_2d_is_refused(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(UnreadableImageError, match=r"2-D array of integer labels"):
        read_mask(str(path))
    np.save(path, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(UnreadableImageError, match=r"2-D array of integer labels, got float32"):
        read_mask(str(path))


def test_mask_labels_map_zero_to_the_ignore_index_and_move_the_others_down():
    labels = torch.tensor([[0, 1, 2, 3, IGNORE]])
    assert torch.equal(
        MaskLabels(3, IGNORE, reduce_zero_label=True)(labels, "m.png"), torch.tensor([[IGNORE, 0, 1, 2, IGNORE]])
    )
    assert torch.equal(MaskLabels(4, IGNORE)(labels, "m.png"), labels)
    with pytest.raises(BadMaskError, match=r"m\.png: labels \[3\] are outside \[0, 3\)"):
        MaskLabels(3, IGNORE)(labels, "m.png")


# --------------------------------------------------------------------------- 8. images to predict
def test_predict_dir_segments_a_folder_of_images_without_masks(tmp_path, make_image):
    root = pair_folders(tmp_path / "data", train=2, val=1)
    predict = tmp_path / "new_photos"
    files = [make_image(predict / "b.jpg", size=(32, 24), seed=1), make_image(predict / "a.png", size=(20, 18), seed=2),
             make_image(predict / "c.png", size=(32, 24), seed=3)]  # fmt: skip
    (predict / "notes.txt").write_text("not an image")
    dm = datamodule(root, predict_dir=predict)
    dm.setup("predict")
    assert [Path(path) for path, mask in dm.val_set.samples] == sorted(files) and len(dm.val_set) == 3
    seen = []
    for images, masks, indices, sizes in dm.predict_dataloader():
        assert images.shape[:2] == (len(indices), 3) and images.shape[-2:] == masks.shape[-2:]
        assert sizes.tolist() == [list(pixels_of(dm.val_set.samples[i][0]).shape[:2]) for i in indices]
        assert (masks == IGNORE).all()
        seen += [Path(dm.val_set.samples[i][0]).name for i in indices.tolist()]
    assert seen == ["a.png", "b.jpg", "c.png"]


def test_without_predict_dir_prediction_reads_the_validation_images(tmp_path):
    root = pair_folders(tmp_path / "data", train=2, val=3)
    dm = datamodule(root)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [len(b[2]) for b in batches] == [2, 1] and batches[0][0].shape == (2, 3, 24, 32)
    assert torch.equal(batches[0][1][0], torch.from_numpy(random_labels((24, 32), seed=SEEDS["val"])).long())
