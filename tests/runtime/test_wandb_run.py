"""The W&B logger fragment, with the real wandb client: an offline run's records, and the online preflight.

No network is used: the offline run writes a ``.wandb`` file that is decoded here, and the online
run without an API key must stop before wandb is started.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml

from mae_lightning.cli import main
from tests.helpers import (
    FAST_16PX,
    QUICKSTART,
    WANDB_CONFIG,
    isolated_env,
    offline_run,
    wandb_records,
    without_network,
)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_offline_run_records_metrics_and_the_resolved_config(wandb_home: Path):
    save_dir = wandb_home / "logs"
    argv = [
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        WANDB_CONFIG,
        "--trainer.logger.init_args.offline",
        "true",
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        *FAST_16PX,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    ]
    try:
        cli = main(argv)
        assert cli.trainer.state.finished
    finally:
        wandb.finish()  # a script does this at exit; the records are complete after it
        wandb.teardown()

    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(save_dir.rglob("*"))
    # The saved config is the run's own (uploaded with its files), not one that every run under save_dir overwrites.
    assert not (save_dir / "config.yaml").exists()
    saved = yaml.safe_load((runs[0] / "files" / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(save_dir)
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    records = list(wandb_records(files[0]))

    history_keys = {_key(item) for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "lr", "train/images_per_sec"} <= history_keys

    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
    resolved = config["config"]  # the whole resolved config, as saved in config.yaml
    assert resolved["model"]["class_path"] == "mae_lightning.MAEPretraining"
    assert resolved["model"]["init_args"]["model"]["class_path"] == "mae_lightning.MaskedAutoencoder"
    assert resolved["data"]["class_path"] == "mae_lightning.DigitsDataModule"
    assert resolved["data"]["init_args"]["img_size"] == 16
    assert resolved["trainer"]["logger"]["class_path"] == "mae_lightning.WandbLogger"
    assert resolved["trainer"]["logger"]["init_args"]["offline"] is True
    # The module's own hyperparameters, with the geometry linked from the data.
    assert config["mask_ratio"] == 0.75
    assert config["model"]["init_args"]["img_size"] == [16, 16]
    assert config["model"]["init_args"]["in_chans"] == 1


def test_online_run_without_api_key_stops_at_once_with_the_offline_fix(tmp_path: Path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_SILENT="true")
    save_dir = tmp_path / "logs"
    argv = ["fit", "--config", QUICKSTART, "--config", WANDB_CONFIG, "--trainer.logger.init_args.save_dir"]
    # In a subprocess with a timeout: a regression would hang at a login prompt or in network retries.
    result = subprocess.run(
        [sys.executable, "-m", "mae_lightning", *argv, str(save_dir), *FAST_16PX],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stdout
    last = lines[-1]
    assert last.startswith("mae_lightning: error:"), result.stderr
    assert "API key" in last
    assert "--trainer.logger.init_args.offline true" in last
    assert "WANDB_MODE=offline" in last
    assert "Traceback" not in result.stderr
    assert not (save_dir / "wandb").exists()  # wandb was never started


def test_without_network_online_wandb_fails_at_once_with_the_offline_fix(tmp_path: Path):
    argv = ["fit", "--config", QUICKSTART, "--config", WANDB_CONFIG, *FAST_16PX]
    result = subprocess.run(
        [*without_network(), sys.executable, "-m", "mae_lightning", *argv],
        cwd=tmp_path,
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,  # a hang (login prompt, network retries) fails here instead of passing late
    )
    assert result.returncode == 2, result.stderr
    assert "--trainer.logger.init_args.offline true" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_without_network_offline_wandb_trains_and_a_resume_continues_the_same_run(tmp_path: Path):
    checkpoint = (
        '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        f'{{"dirpath": "{tmp_path / "ckpt"}", "save_last": true}}}}]'
    )
    argv = [
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        WANDB_CONFIG,
        "--trainer.logger.init_args.offline=true",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *FAST_16PX,
        "--model.init_args.model.init_args.depth=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.callbacks={checkpoint}",
    ]
    runs = []
    for extra in (["--trainer.max_epochs=1"], ["--trainer.max_epochs=2", "--ckpt_path=last"]):
        result = subprocess.run(
            [*without_network(), sys.executable, "-m", "mae_lightning", *argv, *extra],
            cwd=tmp_path,
            env=isolated_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        runs.append(sorted(p.name for p in (tmp_path / "logs" / "wandb").glob("offline-run-*")))
    assert len(runs[0]) == 1 and len(runs[1]) == 2
    run_ids = {name.rsplit("-", 1)[1] for name in runs[1]}
    assert len(run_ids) == 1, runs  # the resumed run continues the W&B run of the first one


def test_offline_run_records_reconstruction_images_and_probe_metrics(wandb_home: Path):
    # The quickstart draws reconstructions every 5 epochs: 5 short epochs.
    limits = ["--trainer.max_epochs", "5", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "2"]
    _, run = offline_run(wandb_home, *limits)
    records = list(wandb_records(next(run.glob("run-*.wandb"))))
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    keys = {_key(item) for h in history for item in h.item}
    assert {"val/knn_top1", "val/online_linear_top1", "val/recon_psnr_masked", "val/recon_ssim_masked"} <= keys
    # an image list is recorded as nested keys: val/reconstruction/{_type,count,captions,filenames,...}
    image = {
        _key(item).removeprefix("val/reconstruction/"): json.loads(item.value_json)
        for h in history
        for item in h.item
        if _key(item).startswith("val/reconstruction/")
    }
    assert image["_type"] == "images/separated" and image["count"] == 1
    assert "reconstruction" in image["captions"][0]
    pngs = list((run / "files" / "media" / "images").rglob("*.png"))
    assert len(pngs) == 1
    from PIL import Image

    # 8 rows of 4 panels of 16x16 drawn at 96x96 with 2-pixel padding, under the column names
    from mae_lightning.callbacks.reconstruction import HEADER_HEIGHT

    assert Image.open(pngs[0]).size == (2 + 4 * 98, HEADER_HEIGHT + 2 + 8 * 98)


def test_offline_run_records_a_table_of_the_reconstructions(wandb_home: Path):
    # The quickstart draws reconstructions every 5 epochs (8 images): 5 short epochs.
    argv = ["--trainer.max_epochs", "5", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    _, run = offline_run(wandb_home, *argv)
    records = list(wandb_records(next(run.glob("run-*.wandb"))))
    history = {
        _key(item): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    assert history["val/reconstruction_table/_type"] == "table-file"
    assert history["val/reconstruction/_type"] == "images/separated"  # the grid is still there
    # wandb writes the table twice: a preview in files/media/table (media cells as "Image") and, with the
    # images, as the run_table artifact the W&B app shows (staged on disk offline, named in the .wandb file).
    previews = list((run / "files" / "media" / "table").rglob("*.table.json"))
    assert [p.name.startswith("reconstruction_table_") for p in previews] == [True]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    tables = [a for a in artifacts if a.type == "run_table" and "reconstruction_table" in a.name]
    assert len(tables) == 1, [a.name for a in artifacts]
    files = {entry.path: Path(entry.local_path) for entry in tables[0].manifest.contents}
    table = json.loads(files[next(name for name in files if name.endswith(".table.json"))].read_text())
    from PIL import Image

    from mae_lightning.callbacks.reconstruction import COLUMNS

    columns = ["epoch", "image", *COLUMNS, "psnr_masked", "ssim_masked", "label"]
    assert table["columns"] == columns
    assert json.loads(previews[0].read_text())["columns"] == columns
    assert len(table["data"]) == 8  # one row per shown image
    for i, row in enumerate(table["data"]):
        values = dict(zip(columns, row, strict=True))
        assert values["epoch"] == 4 and values["image"] == i
        assert math.isfinite(values["psnr_masked"]) and 0 < values["psnr_masked"] < 100
        assert -1 <= values["ssim_masked"] <= 1
        assert values["label"] in range(10)  # digits
        for name in COLUMNS:  # each panel drawn as a cell of the grid: 16x16 enlarged to 96x96
            assert values[name]["_type"] == "image-file"
            assert Image.open(files[values[name]["path"]]).size == (96, 96)


def test_offline_run_is_named_after_the_config_and_takes_group_and_tags_from_yaml(
    wandb_home: Path, caplog: pytest.LogCaptureFixture
):
    # The quickstart, renamed; its CSV logger's `name`, which a logger swapped in keeps, is empty: it names nothing.
    experiment = wandb_home / "my_experiment.yaml"
    text = Path(QUICKSTART).read_text()
    assert 'name: ""}' in text
    experiment.write_text(text)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    identity = wandb_home / "identity.yaml"
    identity.write_text("trainer:\n  logger:\n    init_args:\n      group: ablation-mask\n      tags: [digits, tiny]\n")
    argv = ["--config", str(identity), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    _, run = offline_run(wandb_home, *argv, "--trainer.limit_val_batches", "1", config=str(experiment))
    records = list(wandb_records(next(run.glob("run-*.wandb"))))
    started = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started
    assert started[0].display_name == "my_experiment"  # the stem of the first --config
    assert started[0].run_group == "ablation-mask"
    assert list(started[0].tags) == ["digits", "tiny"]
    # offline: the start says where the run is and how to upload it
    assert f"wandb sync {run}" in caplog.text


@pytest.mark.parametrize(
    ("init_args", "env", "expected"),
    [
        ({}, {}, "quickstart"),
        ({"name": "mine"}, {}, "mine"),  # a name set in YAML or on the command line is kept
        ({"id": "abc123"}, {}, None),  # a continued run keeps its own name
        ({}, {"WANDB_SWEEP_ID": "s1"}, None),  # W&B names the runs of a sweep
    ],
)
def test_default_run_name(init_args: dict, env: dict, expected, monkeypatch: pytest.MonkeyPatch):
    from jsonargparse import Namespace

    from mae_lightning.runtime.wandb_run import name_wandb_run_after_config

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(**init_args))
    name_wandb_run_after_config([logger], [Path(QUICKSTART), Path(WANDB_CONFIG)])
    assert logger.init_args.get("name") == expected
