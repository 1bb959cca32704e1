"""What more than one test module uses: the repository's paths, the arguments of short CLI runs, the tiny
models, W&B offline runs, and the multi-process runs. Fixtures are in conftest.py; the official code that
the tests compare against is in reference.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from mae_lightning import DigitsDataModule, MAEPretraining, MaskedAutoencoder, VisionTransformer

if TYPE_CHECKING:
    from wandb.proto import wandb_internal_pb2

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"  # on the path of the runs that name cli_plugins' classes, and of ddp_run.py
CONFIGS = REPO / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
DEBUG = str(CONFIGS / "presets" / "debug.yaml")
WANDB_CONFIG = str(CONFIGS / "logger" / "wandb.yaml")

# The real CIFAR-10 subset of conftest's ``cifar10_subset``.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_PER_CLASS = 200
CIFAR10_TEST_PER_CLASS = 50


# ---------------------------------------------------------------------------- short CLI runs
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL_BATCHES = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16"]
# Keeps an in-process run short and quiet; goes after the --config files it overrides.
FAST = [*SMALL_BATCHES, *QUIET]
FAST_16PX = [*SMALL_BATCHES, "--data.init_args.img_size", "16", *QUIET]

TINY_RUN = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def tiny_model_args(**overrides: int) -> list[str]:
    """The config's MaskedAutoencoder at the sizes of ``TINY_RUN`` (any of them overridden), as CLI arguments."""
    return [f"--model.init_args.model.init_args.{name}={value}" for name, value in {**TINY_RUN, **overrides}.items()]


# ---------------------------------------------------------------------------- tiny models
TINY_MAE = dict(
    img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
    decoder_depth=1, decoder_num_heads=2,
)  # fmt: skip
"""One channel at 16 px (the bundled digits), one block on each side: the model of the tiny training runs."""

TINY_MAE_3CH = {**TINY_MAE, "in_chans": 3, "depth": 2, "num_heads": 4}
"""Three channels, two encoder blocks of four heads: the model checked against the official forward pass."""

TINY_VIT = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
"""The classifier of the digits: the encoder of ``tiny_mae(depth=2)`` with a 10-class head."""


def tiny_mae(seed: int | None = None, **overrides) -> MaskedAutoencoder:
    """A MaskedAutoencoder of ``TINY_MAE``'s sizes, any of them overridden; ``seed`` seeds torch first."""
    if seed is not None:
        torch.manual_seed(seed)
    return MaskedAutoencoder(**{**TINY_MAE, **overrides})


def tiny_vit(**overrides) -> VisionTransformer:
    """A VisionTransformer classifier of ``TINY_VIT``'s sizes, any of them overridden."""
    return VisionTransformer(**{**TINY_VIT, **overrides})


def digits(batch_size: int = 16, img_size: int = 16) -> DigitsDataModule:
    """The bundled digits, loaded in the test's process."""
    return DigitsDataModule(img_size=img_size, batch_size=batch_size, num_workers=0)


def tiny_mae_checkpoint(path: Path) -> Path:
    """A real MAEPretraining checkpoint of the tiny_vit encoder, after one training step."""
    mae = tiny_mae(depth=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(MAEPretraining(mae, warmup_epochs=0), digits())
    trainer.save_checkpoint(path)
    return path


# ---------------------------------------------------------------------------- W&B, offline
def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a ``run-*.wandb`` file.

    wandb >= 0.19 writes it from its Go core and no longer ships the Python reader
    (``wandb.sdk.internal.datastore``), so this reads the format directly: a 7-byte header
    (":W&B", magic 0xBEE1, version 0), then LevelDB-log blocks of 32 KiB, each record cut in
    chunks with a 7-byte header (CRC-32 of type + data, length, type: full/first/middle/last).
    """
    from wandb.proto import wandb_internal_pb2

    block, chunk_header = 32768, 7
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a W&B datastore file"
    pos, pending = 7, b""
    while len(data) - pos >= chunk_header:
        left_in_block = block - pos % block
        if left_in_block < chunk_header:  # the tail of a block is padding
            pos += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + chunk_header])
        if kind == 0:  # zero fill after the last record
            break
        chunk = data[pos + chunk_header : pos + chunk_header + length]
        assert len(chunk) == length, f"truncated record at byte {pos}"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad checksum at byte {pos}"
        pos += chunk_header + length
        if kind in (1, 2):  # full, first
            pending = chunk
        else:  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def without_network() -> list[str]:
    """A command prefix that runs a process with no network at all (a fresh network namespace), if allowed here."""
    try:
        if subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0:
            return ["unshare", "-n"]
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pass
    pytest.skip("cannot start a process without network here (`unshare -n` needs root or user namespaces)")


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a W&B process that can reach no server and finds no API key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # A closed loopback port as the server: were the namespace ever bypassed, nothing leaves the machine.
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_BASE_URL="http://127.0.0.1:9")
    env.update(WANDB_SILENT="true", WANDB_X_DISABLE_STATS="true")
    return env


def offline_run(wandb_home: Path, *extra: str, config: str = QUICKSTART, fast: tuple[str, ...] = tuple(FAST_16PX)):
    """Fit ``config`` with the W&B fragment offline, ``fast`` then ``extra`` after it; returns the CLI and the
    offline run's folder."""
    import wandb

    from mae_lightning.cli import main

    save_dir = wandb_home / "logs"
    argv = ["fit", "--config", config, "--config", WANDB_CONFIG, "--trainer.logger.init_args.offline", "true"]
    argv += ["--trainer.logger.init_args.save_dir", str(save_dir), *fast, *extra]
    try:
        cli = main(argv)
        assert cli.trainer.state.finished
    finally:
        wandb.finish()
        wandb.teardown()
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return cli, runs[0]


# ---------------------------------------------------------------------------- several processes
def clean_env() -> dict[str, str]:
    """The environment of a fresh multi-process start: the project and tests/ importable, one thread per process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    env["OMP_NUM_THREADS"] = "1"  # the processes share the cores
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)  # a clean start, whatever launched pytest
    return env


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m mae_lightning <args>`` in ``cwd``; a collective call on one rank only hangs until the timeout."""
    command = [sys.executable, "-m", "mae_lightning", *args]
    result = subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_losses(path: Path) -> dict[int, str]:
    """step -> exact loss text of a ``cli_plugins.PerRankLosses`` file."""
    return {int(step): loss for step, loss in (line.split() for line in path.read_text().splitlines())}


def tiny_run(data: str, trainer: str, model_args: str = "warmup_epochs: 0") -> str:
    """A run config: a 2-block MAE on 16 px images, the given data and trainer sections (YAML text)."""
    return f"""
seed_everything: 0
model:
  class_path: mae_lightning.MAEPretraining
  init_args:
    model:
      class_path: mae_lightning.MaskedAutoencoder
      init_args: {{patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2,
                  decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2}}
    {model_args}
data:
{data}
trainer:
  accelerator: cpu
  devices: 2
  enable_progress_bar: false
  enable_model_summary: false
{trainer}
"""


DDP = "  strategy: ddp"

DIGITS_16 = """  class_path: mae_lightning.DigitsDataModule
  init_args: {img_size: 16, batch_size: 16, num_workers: 0}"""


def resumable_run(losses: str, data: str = DIGITS_16) -> str:
    """Two DDP processes, 2 epochs of 8 steps, checkpoints every 2 steps and each rank's losses in ``losses``/."""
    trainer = f"""{DDP}
  max_epochs: 2
  limit_train_batches: 8
  limit_val_batches: 0
  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints, save_last: true, every_n_train_steps: 2, save_top_k: -1}}
    - class_path: cli_plugins.PerRankLosses
      init_args: {{dirpath: {losses}}}"""
    return tiny_run(data, trainer, "warmup_epochs: 1")


# ---------------------------------------------------------------------------- checkpoints as the CLI writes them
def cli_checkpoint(path: Path, model: torch.nn.Module, model_args: dict, **module_args) -> Path:
    """``model`` saved as a Lightning checkpoint with the hyperparameters the command line records: the model's
    class and ``model_args`` under ``model``, the LightningModule's other settings (``mask_ratio``, ...) beside."""
    hparams = {"model": {"class_path": f"mae_lightning.{type(model).__name__}", "init_args": model_args}}
    contents = {
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "hyper_parameters": {**hparams, **module_args},
        "pytorch-lightning_version": "2.5.0",
        "epoch": 0,
        "global_step": 1,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, path)
    return path


def summed_groups(folder: Path, world_size: int) -> dict[tuple[float, float], int]:
    """(weight decay, lr scale) -> parameter elements over all ranks, from OptimizerGroupSizes' files."""
    total: dict[tuple[float, float], int] = {}
    for rank in range(world_size):
        for group in json.loads((folder / f"groups_rank{rank}.json").read_text()):
            key = (group["weight_decay"], group["lr_scale"])
            total[key] = total.get(key, 0) + group["numel"]
    return {key: value for key, value in total.items() if value}


# ---------------------------------------------------------------------------- segmentation runs
CAMVID = str(CONFIGS / "segment" / "camvid.yaml")
NAMES = ["dark", "grey", "light"]


def write_pairs(folder, sizes, seed):
    """Grey images whose three vertical bands are three classes, each with its own brightness, plus noise."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for i, (height, width) in enumerate(sizes):
        mask = np.zeros((height, width), dtype=np.uint8)
        cut = sorted(rng.integers(4, width - 4, size=2))
        mask[:, cut[0] :], mask[:, cut[1] :] = 1, 2
        mask[: height // 5] = 255  # void
        image = np.clip(mask.astype(float) * 90 + 20 + rng.normal(0, 8, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"frame_{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"frame_{i:03d}.png")


def camvid_args(root, *extra):
    """configs/segment/camvid.yaml on the small scenes: 3 classes, 1 channel, a tiny head, one short epoch."""
    return [
        "--config", CAMVID,
        "--model.init_args.pretrained", str(root / "mae.ckpt"),
        "--model.init_args.model.init_args.num_classes", "3",
        "--model.init_args.model.init_args.head_channels", "16",
        "--model.init_args.model.init_args.auxiliary_channels", "8",
        "--model.init_args.ignore_index", "255",
        "--data.init_args.root", str(root / "scenes"),
        "--data.init_args.num_classes", "3",
        "--data.init_args.ignore_index", "255",
        "--data.init_args.class_names", str(NAMES),
        "--data.init_args.img_size", "[16, 24]",
        "--data.init_args.in_chans", "1",
        "--data.init_args.mean", "[0.5]",
        "--data.init_args.std", "[0.25]",
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(root / "runs"),
        *QUIET, *extra,
    ]  # fmt: skip
