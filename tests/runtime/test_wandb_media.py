"""What the callbacks draw, as the real W&B client records it offline: SegmentationReport's images with W&B's
segmentation-mask overlays and its per-class table, and ReconstructionCallback's sound and colour spectrograms of
audio data.

No network is used: each offline run writes a ``.wandb`` file that is decoded here, and its media under
``files/media``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    CAMVID,
    CONFIGS,
    NAMES,
    QUIET,
    TINY_MAE,
    camvid_args,
    cli_checkpoint,
    offline_run,
    tiny_mae,
    wandb_records,
    write_pairs,
)

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _history(run: Path) -> tuple[list, dict]:
    """The run's records, and its history as {key: value} (nested keys joined by "/"; the last value of each)."""
    records = list(wandb_records(next(run.glob("run-*.wandb"))))
    history = {
        _key(item): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    return records, history


def _media(history: dict, key: str) -> dict:
    """A logged media value: W&B records it as nested keys ``<key>/_type``, ``<key>/count``, ..."""
    return {k.removeprefix(f"{key}/"): v for k, v in history.items() if k.startswith(f"{key}/")}


def _logged_table(records: list, name: str) -> dict:
    """The JSON of the one run_table artifact of ``name``, as the W&B app reads it (staged on disk offline)."""
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    tables = [a for a in artifacts if a.type == "run_table" and name in a.name]
    assert len(tables) == 1, [a.name for a in artifacts]
    files = {entry.path: Path(entry.local_path) for entry in tables[0].manifest.contents}
    return json.loads(files[next(path for path in files if path.endswith(".table.json"))].read_text())


# --------------------------------------------------------------------------- segmentation
def test_segmentation_report_logs_mask_overlays_and_the_per_class_table(wandb_home: Path):
    root = wandb_home
    write_pairs(root / "scenes" / "train", [(20, 28)] * 4, seed=0)
    write_pairs(root / "scenes" / "val", [(20, 28), (18, 30), (24, 26), (20, 28)], seed=1)
    cli_checkpoint(root / "mae.ckpt", tiny_mae(seed=0, depth=4), {**TINY_MAE, "depth": 4})
    args = camvid_args(root, *SHORT)
    # The config goes first (offline_run puts it under the W&B fragment); offline_run's FAST_16PX comes before the
    # other arguments, whose img_size [16, 24] and batch size 4 win.
    assert args[:2] == ["--config", CAMVID]
    _, run = offline_run(wandb_home, *args[2:], config=CAMVID)
    records, history = _history(run)

    image = _media(history, "val/segmentation")
    assert image["_type"] == "images/separated"
    assert image["count"] == 4  # num_images of the config, a whole validation batch
    assert len(image["all_masks"]) == 4
    images = run / "files"
    for i, (filename, masks) in enumerate(zip(image["filenames"], image["all_masks"], strict=True)):
        picture = Image.open(images / filename)
        # The validation image itself (grey, in RGB), as the data read it, in the batch's padding.
        original = np.asarray(Image.open(root / "scenes" / "val" / "images" / f"frame_{i:03d}.png")).astype(int)
        drawn = np.asarray(picture.convert("RGB")).astype(int)[: original.shape[0], : original.shape[1]]
        assert np.abs(drawn - original[..., None]).max() <= 1
        assert set(masks) == {"ground_truth", "prediction"}
        for name in ("ground_truth", "prediction"):
            assert masks[name]["_type"] == "mask"
            mask = Image.open(images / masks[name]["path"])
            assert mask.size == picture.size
            labels = set(np.unique(np.asarray(mask)).tolist())
            assert labels <= {0, 1, 2, 255}, labels  # the classes; 255: void, and the batch's padding
        truth, prediction = (
            np.asarray(Image.open(images / masks[name]["path"])) for name in ("ground_truth", "prediction")
        )
        assert (truth[prediction == 255] == 255).all()  # the padding of the batch, void in both
        assert (prediction < 3).any()
    # The class names of each overlay are a singleton of the run's config (not repeated in every step).
    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
    class_labels = config["_wandb"]["mask/class_labels"]
    for name in ("ground_truth", "prediction"):
        singleton = class_labels[f"val/segmentation_wandb_delimeter_{name}"]
        assert {int(k): v for k, v in singleton["value"].items()} == dict(enumerate(NAMES))

    assert history["val/per_class_iou/_type"] == "table-file"
    table = _logged_table(records, "per_class_iou")
    assert table["columns"] == ["class", "IoU", "accuracy"]
    assert [row[0] for row in table["data"]] == NAMES  # one row per class
    for _, iou, accuracy in table["data"]:
        assert iou is None or 0.0 <= iou <= 1.0
        assert accuracy is None or 0.0 <= accuracy <= 1.0
    assert history["val/mIoU"] == pytest.approx(np.nanmean([np.nan if r[1] is None else r[1] for r in table["data"]]))


# --------------------------------------------------------------------------- audio
SR = 8000


def _recordings(root: Path) -> Path:
    """root/{train,test}/<digit>/*.wav: two classes of tones at 8 kHz, 0.3 to 0.8 s."""
    soundfile = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    for split, seconds in (("train", (0.3, 0.5, 0.8)), ("test", (0.4, 0.7))):
        for label, hz in enumerate((500.0, 1500.0)):
            (root / split / str(label)).mkdir(parents=True)
            for i, length in enumerate(seconds):
                t = np.arange(round(length * SR)) / SR
                samples = 0.5 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)
                soundfile.write(root / split / str(label) / f"{i}.wav", samples, SR, subtype="PCM_16")
    return root


def test_reconstruction_of_spectrograms_logs_sound_and_a_colour_picture(wandb_home: Path):
    for module in ("soundfile", "soxr", "librosa"):
        pytest.importorskip(module)
    root = _recordings(wandb_home / "fsdd")
    callbacks = '[{"class_path": "mae_lightning.ReconstructionCallback", "init_args": {"num_images": 2}}]'
    model = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                 patch_size=8)  # fmt: skip
    argv = ["--data.init_args.root", str(root), "--data.init_args.img_size", "[32, 32]"]
    argv += ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    argv += [f"--model.init_args.model.init_args.{name}={value}" for name, value in model.items()]
    argv += [*SHORT, "--trainer.check_val_every_n_epoch", "1", "--trainer.callbacks", callbacks]
    # Not offline_run's FAST_16PX: a spectrogram's img_size is (mel bins, frames), and 16 is refused.
    cli, run = offline_run(wandb_home, *argv, config=str(CONFIGS / "audio" / "fsdd.yaml"), fast=tuple(QUIET))
    assert cli.datamodule.features.sample_rate == SR
    _, history = _history(run)

    sound = _media(history, "val/sound")
    assert sound["_type"] == "audio"
    assert sound["count"] == 4  # the original and the reconstruction of each of the 2 shown recordings
    assert sound["captions"] == ["0: original", "0: reconstruction", "1: original", "1: reconstruction"]
    assert sound["sampleRates"] == [SR] * 4
    import soundfile

    files = [run / "files" / entry["path"] for entry in sound["audio"]]
    assert all(entry["_type"] == "audio-file" for entry in sound["audio"])
    assert sorted(files) == sorted((run / "files" / "media" / "audio").rglob("*.wav"))
    for path, duration in zip(files, sound["durations"], strict=True):
        info = soundfile.info(path)
        assert info.samplerate == SR
        assert info.frames > 0 and info.duration == pytest.approx(duration, abs=1e-3)
        samples, _ = soundfile.read(path)
        assert np.isfinite(samples).all() and np.abs(samples).max() > 0  # sound, not silence

    # The picture: spectrograms in a colour map, not grey.
    image = _media(history, "val/reconstruction")
    assert image["_type"] == "images/separated" and image["count"] == 1
    picture = Image.open(run / "files" / image["filenames"][0])
    assert picture.mode == "RGB"
    pixels = np.asarray(picture).astype(int)
    coloured = (pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])
    assert coloured.mean() > 0.5  # the cells, not the white padding and the column names
