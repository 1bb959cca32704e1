"""A real folder's bad files: every readable image is used, unreadable ones are skipped and counted, too many stop."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageFile

from mae_lightning.data import ImageFolderDataModule

GOOD = 14


def messy_folder(root: Path, make_image) -> tuple[Path, list[Path]]:
    """Readable images of every awkward kind, plus three unreadable files; returns (root, unreadable paths)."""
    for i in range(GOOD - 8):
        make_image(root / f"rgb_{i}.jpg", seed=i)
    make_image(root / "gray.png", mode="L")
    make_image(root / "palette.png", mode="P")
    make_image(root / "rgba.png", mode="RGBA")
    make_image(root / "cmyk.jpg", mode="CMYK")
    make_image(root / "sixteen_bit.png", mode="I;16")
    make_image(root / "anim.gif", mode="P")
    make_image(root / "tiny.png", size=(3, 5))  # smaller than the crop
    make_image(root / "large.jpg", size=(3000, 2000))
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "rgb_0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "notes.png").write_text("not an image at all\n")
    return root, [root / "empty.jpg", root / "truncated.jpg", root / "notes.png"]


def datamodule(root: Path, num_workers: int, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(
        root=root, img_size=16, in_chans=3, batch_size=4, num_workers=num_workers, persistent_workers=False, **kwargs
    )
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_files_are_skipped_named_and_counted(tmp_path, make_image, num_workers):
    root, bad = messy_folder(tmp_path / "images", make_image)
    dm = datamodule(root, num_workers, max_bad_image_fraction=0.25)
    assert len(dm.train_set) == GOOD + len(bad)
    truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.warns(UserWarning) if num_workers == 0 else nullcontext():
        batches = list(dm.train_dataloader())
    assert truncated_flag == ImageFile.LOAD_TRUNCATED_IMAGES  # never switched on behind the user's back
    assert len(batches) == len(dm.train_set) // 4
    for images, _ in batches:
        assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    # Counted in the main process even when workers found them.
    assert dm.train_set.num_skipped == len(bad)
    flagged = {Path(dm.train_set.samples[i][0]) for i in torch.nonzero(dm.train_set.bad).flatten().tolist()}
    assert flagged == set(bad)
    # (Worker processes warn on their own stderr; under pytest their warnings are captured in the
    # forked copy of pytest's recorder, so the naming is checked with 0 workers and in the next test.)


def test_each_warning_names_the_unreadable_file(tmp_path, make_image):
    root, bad = messy_folder(tmp_path / "images", make_image)
    dm = datamodule(root, 0, max_bad_image_fraction=0.25)
    with pytest.warns(UserWarning) as record:
        list(dm.train_dataloader())
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert sorted(m.split("skipping unreadable image ")[1].split(":")[0] for m in messages) == sorted(map(str, bad))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_too_many_unreadable_files_stop_with_the_setting_named(tmp_path, make_image, num_workers):
    root, _ = messy_folder(tmp_path / "images", make_image)
    dm = datamodule(root, num_workers, max_bad_image_fraction=0.1)  # 3 of 17 are bad
    # From a worker the error arrives wrapped by the DataLoader, with the message intact.
    warns = pytest.warns(UserWarning) if num_workers == 0 else nullcontext()
    with pytest.raises(RuntimeError, match=r"of 17 image files are unreadable") as error, warns:
        list(dm.train_dataloader())
    assert "data.init_args.max_bad_image_fraction=0.1" in str(error.value)


def test_a_folder_of_only_unreadable_files_stops_when_the_datamodule_is_made(tmp_path):
    """Found before the run starts, in one line naming the folder and the setting to fix."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match="none of the 4 image files under .*images.* can be read") as error:
        datamodule(root, 0, max_bad_image_fraction=1.0)
    assert "data.init_args.root" in str(error.value) and "\n" not in str(error.value)


def test_files_that_all_turn_unreadable_stop_the_reading(tmp_path, make_image):
    """Files broken after the DataModule was made: reading stops instead of looping over them."""
    root = tmp_path / "images"
    for i in range(4):
        make_image(root / f"{i}.jpg", seed=i)
    dm = datamodule(root, 0, max_bad_image_fraction=1.0)
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(RuntimeError, match="none of the 4 image files can be read"), pytest.warns(UserWarning):
        next(iter(dm.train_dataloader()))


def test_a_folder_without_image_files_stops_when_the_datamodule_is_made(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image or array files .* found under .*images.*data.init_args.root"):
        datamodule(root, 0)


def test_large_image_is_read_whole(tmp_path, make_image):
    from mae_lightning.data.datasets import load_image

    path = make_image(tmp_path / "large.jpg", size=(3000, 2000))
    assert np.asarray(load_image(str(path))).shape == (2000, 3000, 3)
