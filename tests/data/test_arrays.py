"""Folders of arrays of any band count (.npy, .tif): reading, statistics, bad files, splits, errors, pictures.

Real files written by the tests; the runs go through ``mae_lightning.cli.main`` in-process, in a temporary
working directory, as in tests/test_cli.py.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from lightning.pytorch import Trainer

from mae_lightning import ImageFolderDataModule, LinearProbe, ReconstructionCallback
from mae_lightning.callbacks.reconstruction import panel_grid, picture_statistics, reconstruction_panels, to_uint8
from mae_lightning.cli import main
from mae_lightning.data.arrays import ReadArray
from mae_lightning.data.datasets import FileList, UnreadableImageError
from mae_lightning.data.statistics import band_statistics
from tests.helpers import QUICKSTART, QUIET, REPO, tiny_model_args, tiny_vit

pytestmark = pytest.mark.usefixtures("run_in_tmp")

MULTISPECTRAL = str(REPO / "configs" / "multispectral_example.yaml")
LOADER = {"num_workers": 0, "pin_memory": False}


def band_array(bands: int, seed: int, size: tuple[int, int] = (20, 24)) -> np.ndarray:
    """(bands, H, W) uint16 values around 1000 * (b + 1), spread 100 * (b + 1): each band its own level."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, bands + 1)[:, None, None]
    return np.clip(rng.normal(1000 * scale, 100 * scale, (bands, *size)), 0, 65535).astype(np.uint16)


def write_npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def write_tif(path: Path, array: np.ndarray, bands_last: bool = False) -> Path:
    """``array`` (C, H, W) written bands first (planar) or bands last (pixel-interleaved)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bands_last:
        tifffile.imwrite(path, np.moveaxis(array, 0, -1), planarconfig="contig", photometric="minisblack")
    else:
        tifffile.imwrite(path, array)
    return path


def class_folder(root: Path, bands: int, per_class: int, suffix: str = ".npy", classes=("forest", "river")) -> Path:
    """root/<class>/<i><suffix>: ``per_class`` arrays per class; TIFFs alternate between the two layouts."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            array = band_array(bands, seed=1000 * label + i)
            path = root / name / f"{i:02d}{suffix}"
            if suffix == ".npy":
                write_npy(path, array.astype(np.float32))
            else:
                write_tif(path, array, bands_last=bool(i % 2))
    return root


def fit_args(root: Path, in_chans: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        QUICKSTART,
        "--data",
        "mae_lightning.ImageFolderDataModule",
        "--data.init_args.root",
        str(root),
        "--data.init_args.in_chans",
        str(in_chans),
        "--data.init_args.img_size",
        "16",
        "--data.init_args.num_workers",
        "0",
        *tiny_model_args(),
        *QUIET,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


# --------------------------------------------------------------------------- reading
def test_tif_layouts_and_npy_read_as_the_same_bands_first_float_tensor(tmp_path):
    array = band_array(13, seed=0)
    planar = write_tif(tmp_path / "planar.tif", array)
    interleaved = write_tif(tmp_path / "interleaved.tif", array, bands_last=True)
    npy = write_npy(tmp_path / "a.npy", array)
    read = ReadArray(13)
    expected = torch.from_numpy(array.astype(np.float32))
    for path in (planar, interleaved, npy):
        got = read(str(path))
        assert got.dtype == torch.float32 and torch.equal(got, expected), path.name  # own units, no /255
    # an (H, W, C) array whose C is also not H: read bands last, whatever tifffile calls its axes
    tifffile.imwrite(tmp_path / "hwc.tif", np.moveaxis(array, 0, -1))
    assert torch.equal(read(str(tmp_path / "hwc.tif")), expected)
    one_band = write_tif(tmp_path / "gray.tif", array[0])
    assert ReadArray(1)(str(one_band)).shape == (1, 20, 24)
    with pytest.raises(UnreadableImageError, match="1 bands, not in_chans=24"):  # 2-D is one band, whatever its width
        ReadArray(24)(str(one_band))


BAD_ARRAYS = {
    "bands.npy": lambda: np.zeros((5, 20, 24), np.float32),  # 5 bands, in_chans=6
    "dims.npy": lambda: np.zeros((2, 6, 20, 24), np.float32),  # 4-D
    "nan.npy": lambda: np.where(np.eye(20, 24, dtype=bool), np.nan, 1.0)[None].repeat(6, 0).astype(np.float32),
    "inf.npy": lambda: np.full((6, 20, 24), np.inf, np.float32),
    "hwc.npy": lambda: np.zeros((20, 24, 6), np.float32),  # .npy is (C, H, W): bands last is a wrong band count
}


def write_bad_arrays(folder: Path) -> list[Path]:
    """One file of each kind of bad array, plus an empty and a truncated one; returns their paths."""
    paths = [write_npy(folder / f"bad_{name}", make()) for name, make in BAD_ARRAYS.items()]
    (folder / "bad_empty.npy").write_bytes(b"")
    whole = write_npy(folder / "bad_whole.npy", np.ones((6, 20, 24), np.float32)).read_bytes()
    (folder / "bad_whole.npy").unlink()
    (folder / "bad_truncated.npy").write_bytes(whole[: len(whole) // 2])
    tif = write_tif(folder / "bad_truncated.tif", band_array(6, seed=1)).read_bytes()
    (folder / "bad_truncated.tif").write_bytes(tif[: len(tif) // 3])
    return [*paths, folder / "bad_empty.npy", folder / "bad_truncated.npy", folder / "bad_truncated.tif"]


def test_each_bad_array_is_unreadable_with_its_reason(tmp_path):
    read = ReadArray(6)
    reasons = {
        "bad_bands.npy": "5 bands, not in_chans=6",
        "bad_dims.npy": "shape (2, 6, 20, 24)",
        "bad_nan.npy": "NaN or infinite",
        "bad_inf.npy": "NaN or infinite",
        "bad_hwc.npy": "20 bands",
        "bad_empty.npy": "EOFError",
        "bad_truncated.npy": "ValueError",
        "bad_truncated.tif": "bad_truncated.tif: ",
    }
    for path in write_bad_arrays(tmp_path):
        with pytest.raises(UnreadableImageError, match=re.escape(reasons[path.name])) as error:
            read(str(path))
        assert error.value.path == str(path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_arrays_are_skipped_named_and_counted_like_bad_images(tmp_path, num_workers):
    root = class_folder(tmp_path / "data", bands=6, per_class=6)
    bad = write_bad_arrays(root / "river")
    dm = ImageFolderDataModule(
        root, in_chans=6, img_size=16, batch_size=4, num_workers=num_workers, persistent_workers=False,
        pin_memory=False, max_bad_image_fraction=0.5,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_set) == 12 + len(bad) == 20
    if num_workers == 0:
        with pytest.warns(UserWarning) as record:
            batches = list(dm.train_dataloader())
        named = {str(w.message).split("skipping unreadable array ")[1].split(":")[0] for w in record}
        assert named >= set(map(str, bad))
    else:
        batches = list(dm.train_dataloader())
    assert len(batches) == 5
    for images, _ in batches:
        assert images.shape == (4, 6, 16, 16) and torch.isfinite(images).all()
    assert dm.train_set.num_skipped == len(bad)  # counted in the main process, from workers too
    flagged = {Path(dm.train_set.samples[i][0]) for i in torch.nonzero(dm.train_set.bad).flatten().tolist()}
    assert flagged == set(bad)


def test_too_many_bad_arrays_stop_with_the_setting_named(tmp_path):
    root = class_folder(tmp_path / "data", bands=6, per_class=6)
    write_bad_arrays(root / "river")
    dm = ImageFolderDataModule(root, in_chans=6, img_size=16, batch_size=4, **LOADER, max_bad_image_fraction=0.2)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"of 20 array files are unreadable") as error, pytest.warns(UserWarning):
        list(dm.train_dataloader())
    assert "data.init_args.max_bad_image_fraction=0.2" in str(error.value)


# --------------------------------------------------------------------------- statistics
def test_band_statistics_are_exact_and_drawn_by_seed(tmp_path):
    arrays = [band_array(4, seed=i, size=(8 + i, 10)) for i in range(6)]
    samples = [(str(write_npy(tmp_path / f"{i}.npy", a)), -1) for i, a in enumerate(arrays)]
    dataset = FileList(samples, [], ReadArray(4))
    mean, std, read = band_statistics(dataset, num_files=100, seed=0)
    pixels = np.concatenate([a.reshape(4, -1) for a in arrays], axis=1).astype(np.float64)
    assert read == 6
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-9)
    some = band_statistics(dataset, num_files=3, seed=0)
    assert some == band_statistics(dataset, num_files=3, seed=0)
    assert some != band_statistics(dataset, num_files=3, seed=1)


def test_statistics_are_computed_once_and_logged_once(tmp_path, caplog):
    root = class_folder(tmp_path / "data", bands=3, per_class=4)
    dm = ImageFolderDataModule(root, in_chans=3, img_size=16, batch_size=2, val_fraction=0.25, **LOADER)
    dm.setup("fit")
    assert dm.mean is None  # not before a loader is made: a checkpoint restored after setup may bring them
    with caplog.at_level(logging.INFO):
        images, _ = next(iter(dm.train_dataloader()))
        next(iter(dm.val_dataloader()))
        next(iter(dm.train_dataloader()))
    logged = [r.getMessage() for r in caplog.records if "per-band mean" in r.getMessage()]
    assert len(logged) == 1 and "computed from 6 training files drawn with seed 0" in logged[0]
    assert dm.state_dict()["mean"] == list(dm.mean) and len(dm.mean) == 3
    assert abs(images.mean()) < 1.5 and 0.3 < images.std() < 2  # normalised: the levels 1000..3000 are gone


def test_given_mean_and_std_are_used_as_given(tmp_path):
    root = class_folder(tmp_path / "data", bands=3, per_class=2)
    mean, std = (1000.0, 2000.0, 3000.0), (100.0, 200.0, 300.0)
    dm = ImageFolderDataModule(root, in_chans=3, img_size=16, batch_size=2, **LOADER, mean=mean, std=std)
    dm.setup("fit")
    dm.load_state_dict({"seed": 0, "epoch": 0, "batches_done": 0, "mean": [0.0] * 3, "std": [1.0] * 3})
    images, _ = next(iter(dm.train_dataloader()))
    assert dm.mean == mean and dm.std == std
    assert images.abs().mean() < 3  # normalised with the given values: the bands' levels are gone


# --------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def npy_run(tmp_path_factory: pytest.TempPathFactory):
    """A 6-band .npy folder (2 classes, bad files among them) pretrained through the CLI; its checkpoint."""
    work = tmp_path_factory.mktemp("npy_run")
    root = work / "data"
    class_folder(root / "train", bands=6, per_class=12)
    bad = write_bad_arrays(root / "train" / "river")
    class_folder(root / "val", bands=6, per_class=3)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(work)
        monkeypatch.setattr(sys, "argv", ["mae_lightning"])
        cli = main(
            fit_args(root, 6, "--data.init_args.batch_size", "8", "--data.init_args.max_bad_image_fraction", "0.3")
        )
    log_dir = work / cli.trainer.log_dir
    checkpoint = sorted(work.rglob("epoch=*.ckpt"))[0]
    return SimpleNamespace(cli=cli, root=root, bad=bad, checkpoint=checkpoint, log_dir=log_dir, work=work)


def test_a_6_band_npy_folder_pretrains_with_its_own_band_statistics(npy_run):
    """Computed from the training files (bad ones left out), logged, and in every batch's normalisation."""
    cli = npy_run.cli
    assert cli.trainer.state.finished and cli.trainer.global_step == 4  # 32 files / batch 8
    assert cli.model.model.in_chans == 6 and cli.datamodule.file_kind == "array"
    good = [np.load(p) for p in sorted((npy_run.root / "train").rglob("[0-9]*.npy"))]
    assert len(good) == 24
    pixels = np.concatenate([a.reshape(6, -1) for a in good], axis=1).astype(np.float64)
    np.testing.assert_allclose(cli.datamodule.mean, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(cli.datamodule.std, pixels.std(axis=1), rtol=1e-9)
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_bad_arrays_are_counted_in_the_skipped_images_metric(npy_run):
    with open(npy_run.log_dir / "metrics.csv", newline="") as f:
        counts = [float(row["data/skipped_images"]) for row in csv.DictReader(f) if row.get("data/skipped_images")]
    assert counts == [len(npy_run.bad)]


def test_the_checkpoint_stores_the_statistics_and_predict_reuses_them(npy_run):
    stored = torch.load(npy_run.checkpoint, map_location="cpu", weights_only=True)["ImageFolderDataModule"]
    assert stored["mean"] == list(npy_run.cli.datamodule.mean) and stored["std"] == list(npy_run.cli.datamodule.std)
    # stats_files 1 would compute other values: the checkpoint's are the ones used
    args = ["predict", *fit_args(npy_run.root, 6, "--data.init_args.batch_size", "8")[1:]]
    cli = main([*args, "--data.init_args.stats_files", "1", "--ckpt_path", str(npy_run.checkpoint)])
    assert list(cli.datamodule.mean) == stored["mean"] and list(cli.datamodule.std) == stored["std"]
    one_file = ImageFolderDataModule(npy_run.root, in_chans=6, img_size=16, stats_files=1, **LOADER)
    one_file.resolve_statistics()
    assert one_file.mean != cli.datamodule.mean


def test_statistics_handed_over_from_a_checkpoint_are_used_and_a_file_without_them_falls_through(npy_run, tmp_path):
    """use_statistics_of: the stored statistics when the file holds them; computed ones when it holds none."""
    stored = torch.load(npy_run.checkpoint, map_location="cpu", weights_only=True)["ImageFolderDataModule"]
    handed = ImageFolderDataModule(npy_run.root, in_chans=6, img_size=16, stats_files=1, **LOADER)
    handed.use_statistics_of(npy_run.checkpoint)
    handed.resolve_statistics()
    assert list(handed.mean) == stored["mean"] and list(handed.std) == stored["std"]

    official = tmp_path / "official.pth"  # an official-style weights file: no DataModule state in it
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}}, official)
    computed = ImageFolderDataModule(npy_run.root, in_chans=6, img_size=16, stats_files=1, **LOADER)
    computed.use_statistics_of(official)
    computed.resolve_statistics()
    unaided = ImageFolderDataModule(npy_run.root, in_chans=6, img_size=16, stats_files=1, **LOADER)
    unaided.resolve_statistics()
    assert computed.mean == unaided.mean != handed.mean


def test_a_linear_probe_normalises_as_its_pretraining_did(npy_run):
    """The probe's DataModule finds the statistics in the ``pretrained`` checkpoint instead of computing them."""
    stored = torch.load(npy_run.checkpoint, map_location="cpu", weights_only=True)["ImageFolderDataModule"]
    encoder = tiny_vit(in_chans=6, num_classes=2, depth=1)
    probe = LinearProbe(encoder, pretrained=str(npy_run.checkpoint), warmup_epochs=0)
    dm = ImageFolderDataModule(
        npy_run.root, in_chans=6, img_size=16, batch_size=8, stats_files=1, max_bad_image_fraction=0.3, **LOADER
    )
    trainer = Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=npy_run.work,
    )  # fmt: skip
    trainer.fit(probe, datamodule=dm)
    assert list(dm.mean) == stored["mean"] and list(dm.std) == stored["std"]


def test_a_13_band_tif_folder_pretrains_with_the_multispectral_config(tmp_path):
    """The shipped example, on a flat folder of 13-band .tif in both layouts, split 25% by val_fraction."""
    root = tmp_path / "tiles"
    for i in range(16):
        write_tif(root / f"tile_{i:02d}.tif", band_array(13, seed=i, size=(24, 24)), bands_last=bool(i % 2))
    cli = main(
        [
            "fit",
            "--config",
            MULTISPECTRAL,
            "--data.init_args.root",
            str(root),
            "--data.init_args.img_size",
            "16",
            "--data.init_args.val_fraction",
            "0.25",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.model.init_args.patch_size=4",
            *tiny_model_args(),
            "--trainer.precision",
            "32-true",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "1",
            "--trainer.callbacks",
            '[{"class_path": "mae_lightning.ReconstructionCallback", "init_args": {"rgb_bands": [3, 2, 1]}}]',
            *QUIET,
        ]
    )
    dm = cli.datamodule
    assert cli.trainer.state.finished and cli.trainer.global_step == 3  # 12 training tiles / 4
    assert (len(dm.train_set), len(dm.val_set)) == (12, 4)
    assert cli.model.model.in_chans == 13 and len(dm.mean) == 13
    assert dm.mean[12] > 10 * dm.mean[0]  # band levels 1000 .. 13000 in their own units
    pictures = list(Path(cli.trainer.log_dir).rglob("reconstructions/*.png"))
    assert len(pictures) == 1
    assert torch.isfinite(cli.trainer.callback_metrics["val/recon_psnr_masked"])


# --------------------------------------------------------------------------- val_fraction
def split_of(root: Path, seed: int, **kwargs) -> tuple[list, list]:
    dm = ImageFolderDataModule(root, img_size=16, batch_size=1, seed=seed, val_fraction=0.25, **LOADER, **kwargs)
    dm.setup("fit")
    return dm.train_set.samples, dm.val_set.samples


@pytest.mark.parametrize("kind", ["npy", "jpg"])
def test_val_fraction_splits_one_folder_deterministically_disjoint_complete_and_stratified(tmp_path, kind, make_image):
    root = tmp_path / "data"
    counts = {"a": 8, "b": 12, "c": 4}
    for name, count in counts.items():
        for i in range(count):
            if kind == "npy":
                write_npy(root / name / f"{i}.npy", band_array(3, seed=i))
            else:
                make_image(root / name / f"{i}.jpg", seed=i)
    train, val = split_of(root, seed=0, in_chans=3)
    assert (train, val) == split_of(root, seed=0, in_chans=3)  # the same seed, the same split
    assert val != split_of(root, seed=1, in_chans=3)[1]  # another seed, another split
    paths = {p for p, _ in train} | {p for p, _ in val}
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert len(paths) == len(train) + len(val) == sum(counts.values())
    for target, count in enumerate(counts.values()):  # a quarter of every class validates
        assert sum(t == target for _, t in val) == count // 4
    assert all(Path(p).parent.name == list(counts)[t] for p, t in train + val)  # labels from the class folders


def test_val_fraction_gives_the_knn_monitor_labelled_validation_batches(tmp_path):
    root = class_folder(tmp_path / "data", bands=6, per_class=8)
    dm = ImageFolderDataModule(root, in_chans=6, img_size=16, batch_size=4, val_fraction=0.25, **LOADER)
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 6, 16, 16) and sorted(targets.tolist()) == [0, 0, 1, 1]


def test_val_fraction_of_a_flat_folder_and_a_resumed_seed(tmp_path):
    root = tmp_path / "flat"
    for i in range(10):
        write_npy(root / f"{i}.npy", band_array(2, seed=i))
    dm = ImageFolderDataModule(root, in_chans=2, img_size=16, batch_size=2, val_fraction=0.3, seed=0, **LOADER)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (7, 3) and set(dm.val_set.targets) == {-1}
    # A checkpoint of a run with seed 5: its split, not this run's, continues.
    seed_5 = ImageFolderDataModule(root, in_chans=2, img_size=16, batch_size=2, val_fraction=0.3, seed=5, **LOADER)
    seed_5.setup("fit")
    assert dm.val_set.samples != seed_5.val_set.samples
    dm.load_state_dict({"seed": 5, "epoch": 0, "batches_done": 0})
    assert dm.val_set.samples == seed_5.val_set.samples and dm.train_set.samples == seed_5.train_set.samples


# --------------------------------------------------------------------------- one-line errors
def config_error(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """The CLI stops with code 2 and one ``mae_lightning: error:`` line, no traceback; returns the line."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.fast_dev_run", "true"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("mae_lightning: error: ") and err.count("mae_lightning: error:") == 1, err
    return lines[-1]


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _unreadable(tmp: Path) -> Path:
    for i in range(3):
        (tmp / "broken").mkdir(exist_ok=True)
        (tmp / "broken" / f"{i}.npy").write_bytes(b"\x93NUMPY broken")
    return tmp / "broken"


def _five_bands(tmp: Path) -> Path:
    for i in range(3):
        write_npy(tmp / "five" / f"{i}.npy", band_array(5, seed=i))
    return tmp / "five"


def _mixed(tmp: Path) -> Path:
    write_npy(tmp / "mixed" / "a.npy", band_array(6, seed=0))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp / "mixed" / "b.png")
    return tmp / "mixed"


def _images(tmp: Path) -> Path:
    from PIL import Image

    (tmp / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp / "images" / f"{i}.png")
    return tmp / "images"


ERRORS = [
    ("empty folder", _empty, 6, ["no image or array files", "empty", "data.init_args.root"]),
    ("no readable file", _unreadable, 6, ["none of the 3 array files", "broken", "data.init_args.root"]),
    ("band count", _five_bands, 6, ["5 bands", "data.init_args.in_chans=6", "five"]),
    ("images and arrays", _mixed, 6, ["image files (b.png", ".npy arrays (a.npy", "mixed", "data.init_args.root"]),
    ("6 channels of image files", _images, 6, ["1, 3 or 4 channels, got in_chans=6", "images", ".npy", "in_chans"]),
]


@pytest.mark.parametrize(("make", "in_chans", "words"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_data_errors_are_one_line_naming_the_folder_and_the_setting(tmp_path, capsys, make, in_chans, words):
    folder = make(tmp_path)
    line = config_error(capsys, fit_args(folder, in_chans))
    for word in words:
        assert word in line, line


def test_val_fraction_errors_are_one_line(tmp_path, capsys):
    root = class_folder(tmp_path / "data", bands=6, per_class=2)
    class_folder(root / "train", bands=6, per_class=2)
    class_folder(root / "val", bands=6, per_class=1)
    line = config_error(capsys, fit_args(root, 6, "--data.init_args.val_fraction", "0.2"))
    assert "val_fraction=0.2" in line and "val'" in line
    small = class_folder(tmp_path / "small", bands=6, per_class=1)
    line = config_error(capsys, fit_args(small, 6, "--data.init_args.val_fraction", "0.2"))
    assert "val_fraction=0.2 leaves no validation file" in line and "small" in line


def test_tiff_files_among_images_are_images_and_file_kind_can_say_so(tmp_path, make_image):
    """TIFFs go with the files beside them; ``file_kind: image`` reads a folder of RGB TIFFs with PIL."""
    make_image(tmp_path / "mixed" / "a.png")
    make_image(tmp_path / "mixed" / "b.tif")
    assert ImageFolderDataModule(tmp_path / "mixed", **LOADER).file_kind == "image"
    make_image(tmp_path / "tiffs" / "a.tif")
    assert ImageFolderDataModule(tmp_path / "tiffs", **LOADER).file_kind == "array"  # (H, W, 3) uint8 arrays
    as_images = ImageFolderDataModule(tmp_path / "tiffs", file_kind="image", img_size=16, batch_size=1, **LOADER)
    as_images.setup("fit")
    assert as_images.mean == pytest.approx((0.485, 0.456, 0.406))  # ImageNet's: pixels in 0..1
    assert next(iter(as_images.train_dataloader()))[0].shape == (1, 3, 16, 16)


# --------------------------------------------------------------------------- pictures
def band_panels(num_bands: int) -> dict[str, torch.Tensor]:
    """Panels whose band ``b`` is the constant ``b / 20``: a grid's channel says which band it shows."""
    levels = torch.arange(num_bands, dtype=torch.float32).view(1, -1, 1, 1) / 20
    image = levels.expand(2, num_bands, 8, 8).clone()
    return {key: image for key in ("original", "masked", "reconstruction", "pasted")}


GRID_INSIDE = 4  # a pixel of the first panel, past the grid's padding
RGB_CASES = [(13, [3, 2, 1], [3, 2, 1]), (13, None, [0, 1, 2]), (6, [4], [4, 4, 4]), (1, None, [0, 0, 0])]


@pytest.mark.parametrize(("num_bands", "rgb_bands", "shown"), RGB_CASES)
def test_rgb_bands_pick_the_bands_drawn(num_bands, rgb_bands, shown):
    """Given bands as red, green, blue (one band: grey); by default the first three, or grey for one band."""
    grid = panel_grid(band_panels(num_bands), rgb_bands)
    assert grid.shape[0] == 3
    inside = grid[:, GRID_INSIDE, GRID_INSIDE]
    torch.testing.assert_close(inside, torch.tensor(shown, dtype=torch.float32) / 20)
    assert to_uint8(grid).shape[2] == 3


def test_rgb_bands_are_checked():
    with pytest.raises(ValueError, match="rgb_bands=\\[3, 2, 13\\] names a band past the 13 bands"):
        panel_grid(band_panels(13), [3, 2, 13])
    for wrong in ([1, 2], [0, -1, 2]):
        with pytest.raises(ValueError, match="rgb_bands"):
            ReconstructionCallback(rgb_bands=wrong)


def test_array_pictures_stretch_each_band_over_its_mean_plus_minus_two_std(tmp_path):
    """Un-normalised with the data's statistics, a band spans mean - 2 std (black) .. mean + 2 std (white)."""
    data = SimpleNamespace(file_kind="array", mean=(1000.0, 5000.0), std=(100.0, 900.0))
    mean, std = picture_statistics(data)
    values = torch.tensor([[800.0, 1000.0, 1200.0, 1500.0], [3200.0, 5000.0, 6800.0, 0.0]]).view(1, 2, 1, 4)
    normalised = (values - torch.tensor(data.mean).view(1, 2, 1, 1)) / torch.tensor(data.std).view(1, 2, 1, 1)

    class Identity(torch.nn.Module):  # a "model" of 1-pixel patches that reconstructs its input: panels = pictures
        patch_size, grid_size = 1, (1, 4)

        def forward(self, imgs, mask_ratio, noise):
            return None, imgs.flatten(2).transpose(1, 2), torch.zeros(1, 4)

        def prediction_to_pixels(self, pred, imgs):
            return pred.transpose(1, 2).reshape(imgs.shape)

    panels = reconstruction_panels(Identity(), normalised, 0.75, torch.zeros(1, 4), mean, std)
    expected = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.0, 0.5, 1.0, 0.0]]).view(1, 2, 1, 4)
    torch.testing.assert_close(panels["original"], expected)
    images = SimpleNamespace(file_kind="image", mean=(0.5,), std=(0.25,))
    assert picture_statistics(images) == ((0.5,), (0.25,))  # images: their own statistics, pixels in 0..1
