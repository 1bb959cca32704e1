"""litdata shards: written from a folder (bad files skipped and counted), read back exactly, trained on through
the CLI, split across real processes, and resumed mid-epoch bit for bit (1 and 2 processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae_lightning import StreamingDataModule
from mae_lightning.cli import main
from mae_lightning.data.resumable import ResumableSampler
from mae_lightning.data.shards import open_shards
from mae_lightning.prepare import main as prepare_main
from tests.helpers import clean_env, read_losses, resumable_run, run_cli, tiny_run

CLASSES = ("cat", "dog")
TRAIN_PER_CLASS = 32
# Every training image is one grey level, three apart: a crop of it keeps the level, so a batch says which
# images it holds.
LEVEL_STEP = 3


def write_folder(root: Path) -> dict[str, tuple[int, int]]:
    """root/train/<class>/*.png (2 x 32 flat grey images), root/val/<class>/*.jpg (2 x 4), one corrupt file.

    Returns {relative name: (label, grey level)} of the training images.
    """
    expected = {}
    for label, name in enumerate(CLASSES):
        for i in range(TRAIN_PER_CLASS):
            level = LEVEL_STEP * (label * TRAIN_PER_CLASS + i)
            path = root / "train" / name / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 24), level, dtype=np.uint8)).save(path)
            expected[f"{name}/{i:03d}.png"] = (label, level)
        for i in range(4):
            path = root / "val" / name / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    return expected


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]], dict]:
    base = tmp_path_factory.mktemp("shards")
    expected = write_folder(base / "folder")
    counts = prepare_main([str(base / "folder"), str(base / "shards"), "--workers", "2", "--chunk_bytes", "4KB"])
    return base, expected, counts


def test_prepare_skips_unreadable_files_and_the_shards_hold_every_other_file_as_stored(shards):
    base, expected, counts = shards
    assert counts == {"train": {"images": 64, "skipped": 1}, "val": {"images": 8, "skipped": 0}}
    skipped = (base / "shards" / "train" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    train = open_shards(str(base / "shards" / "train"))
    assert len(list((base / "shards" / "train").glob("chunk-*.bin"))) > 1  # several shards at 4 KB each
    items = [train[i] for i in range(len(train))]
    assert sorted(item["name"] for item in items) == sorted(expected)
    for item in items:
        source = base / "folder" / "train" / item["name"]
        assert bytes(item["image"]) == source.read_bytes()  # not re-encoded
        assert item["label"] == expected[item["name"]][0]


@pytest.mark.parametrize("decode", ["pil", "tensor"])
def test_shards_decode_to_the_images_of_the_folder(shards, decode):
    base, expected, _ = shards
    data = StreamingDataModule(root=str(base / "shards"), img_size=16, in_chans=1, decode=decode, num_workers=0)
    dataset = data.build_dataset("train", None)
    for index in range(len(dataset)):
        image, label = dataset[index]
        name = dataset.item(index)["name"]
        pixels = np.asarray(image.convert("L")) if decode == "pil" else image.numpy()[0]
        assert label == expected[name][0]
        assert (pixels == expected[name][1]).all()


def test_fit_through_the_cli_on_local_shards_with_validation(shards, tmp_path, monkeypatch):
    base, _, _ = shards
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    data = f"""  class_path: mae_lightning.StreamingDataModule
  init_args: {{root: {base / "shards"}, img_size: 16, in_chans: 1, batch_size: 8, num_workers: 1, decode: tensor}}"""
    settings = ["max_epochs: 1", "limit_train_batches: 3", "limit_val_batches: 1", "logger: false"]
    trainer = "\n".join(f"  {line}" for line in [*settings, "enable_checkpointing: false"])
    (tmp_path / "run.yaml").write_text(tiny_run(data, trainer).replace("devices: 2", "devices: 1"))
    cli = main(["fit", "--config", "run.yaml"])
    assert cli.trainer.global_step == 3
    assert len(cli.datamodule.train_set) == 64 and len(cli.datamodule.val_set) == 8
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_an_unreachable_remote_location_stops_in_one_line(tmp_path):
    env = {name: value for name, value in clean_env().items() if not name.startswith("AWS_")}
    # No AWS credentials, wherever the tests run: the request fails without leaving the machine.
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # nor from a cloud machine's metadata service
    code = "from mae_lightning import StreamingDataModule; StreamingDataModule(root='s3://no-such-bucket/shards')"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("ConnectionError: cannot read the shards at 's3://no-such-bucket/shards/train'")
    )


def shard_data(base: Path, batch_size: int, extra: str = "") -> str:
    return f"""  class_path: mae_lightning.StreamingDataModule
  init_args: {{root: {base / "shards"}, val_dir: null, img_size: 16, in_chans: 1, batch_size: {batch_size},
              num_workers: 1{extra}}}"""


@pytest.mark.slow
def test_two_processes_read_disjoint_shares_that_cover_the_shards(shards, tmp_path):
    base, expected, _ = shards
    trainer = """  strategy: ddp
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  callbacks:
    - class_path: cli_plugins.PerRankImageLevels
      init_args: {dirpath: levels, mean: [0.5], std: [0.5]}"""
    (tmp_path / "run.yaml").write_text(tiny_run(shard_data(base, 8, ", mean: [0.5], std: [0.5]"), trainer))
    run_cli(tmp_path, "fit", "--config", "run.yaml")
    shares = [set(map(int, (tmp_path / "levels" / f"rank{r}.txt").read_text().split())) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 32
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {level for _, level in expected.values()}


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_a_run_on_shards_resumed_mid_epoch_repeats_every_ranks_losses_bit_for_bit(shards, tmp_path, devices):
    base, _, _ = shards
    for name in ("full", "split"):
        (tmp_path / name).mkdir()
        config = resumable_run("losses", data=shard_data(base, batch_size=8 // devices))
        (tmp_path / name / "run.yaml").write_text(config.replace("devices: 2", f"devices: {devices}"))
    run_cli(tmp_path / "full", "fit", "--config", "run.yaml")
    stop = '{"class_path": "cli_plugins.StopAtStep", "init_args": {"step": 6}}'
    run_cli(tmp_path / "split", "fit", "--config", "run.yaml", "--trainer.callbacks+", stop)
    run_cli(tmp_path / "split", "fit", "--config", "run.yaml", "--ckpt_path", "last")
    for rank in range(devices):
        full = read_losses(tmp_path / "full" / "losses" / f"rank{rank}.txt")
        split = read_losses(tmp_path / "split" / "losses" / f"rank{rank}.txt")
        assert sorted(full) == list(range(1, 17))
        assert split == full, f"rank {rank}"


def test_the_grouped_order_reads_a_window_of_shards_at_a_time_and_each_rank_its_own_share():
    sizes = [5, 7, 6, 4, 8, 5, 6, 7, 3, 9]  # ten shards, 60 items
    starts = np.cumsum([0, *sizes[:-1]])
    shard_of = {i: shard for shard, start in enumerate(starts) for i in range(start, start + sizes[shard])}
    data = list(range(sum(sizes)))
    samplers = [ResumableSampler(data, 2, rank, seed=3, groups=sizes, window=3) for rank in range(2)]
    order = samplers[0].grouped_order()
    assert sorted(order) == data and order != data
    # Cut the order where the items so far fill their shards exactly: windows of 3 shards (1 left at the end).
    windows, begin = [], 0
    while begin < len(order):
        end, shards = begin, set()
        while True:
            shards.add(shard_of[order[end]])
            end += 1
            if end - begin == sum(sizes[shard] for shard in shards):
                break
        windows.append(shards)
        begin = end
    assert [len(shards) for shards in windows] == [3, 3, 3, 1]
    # DistributedSampler deals the order out: disjoint shares, resumable part-way.
    shares = [[index for index, _ in sampler] for sampler in samplers]
    assert shares[0] == order[0::2] and shares[1] == order[1::2]
    resumed = ResumableSampler(data, 2, 0, seed=3, groups=sizes, window=3)
    resumed.resume(epoch=0, samples_done=10)
    assert [index for index, _ in resumed] == shares[0][10:]
    samplers[0].set_epoch(1)
    assert samplers[0].grouped_order() != order  # a new order every epoch
    with pytest.raises(ValueError, match="groups add up to 59, but the dataset holds 60"):
        ResumableSampler(data, groups=[*sizes[:-1], 8])
