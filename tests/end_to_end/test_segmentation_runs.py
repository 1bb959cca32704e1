"""Segmentation through the command line, as a user runs it: configs/segment/camvid.yaml from a pretraining
checkpoint's path alone (the encoder's size read from it), its scores, pictures and per-class table, ``predict``
writing one mask per image, and a 2-process validation that scores what 1 process does."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mae_lightning.cli import main
from tests.helpers import (
    CONFIGS,
    NAMES,
    QUIET,
    TINY_MAE,
    camvid_args,
    cli_checkpoint,
    run_cli,
    summed_groups,
    tiny_mae,
    write_pairs,
)

PREDICT = str(CONFIGS / "segment" / "predict.yaml")


@pytest.fixture
def segmentation_data(tmp_path):
    write_pairs(tmp_path / "scenes" / "train", [(20, 28)] * 8, seed=0)
    write_pairs(tmp_path / "scenes" / "val", [(20, 28), (18, 30), (24, 26), (20, 28), (22, 33)], seed=1)
    # As the command line writes a pretraining checkpoint: the model's arguments recorded with its weights.
    cli_checkpoint(tmp_path / "mae.ckpt", tiny_mae(seed=0, depth=4), {**TINY_MAE, "depth": 4})
    return tmp_path


def test_the_camvid_config_segments_from_a_checkpoint_path_alone_and_predict_writes_masks(
    segmentation_data, run_in_tmp
):
    root = segmentation_data
    main(["fit", *camvid_args(root)])

    run = root / "runs" / "version_0"
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scores = [row for row in rows if row.get("val/mIoU")]
    assert len(scores) == 2
    for name in ("val/mIoU", "val/mAcc", "val/aAcc", *(f"val/IoU/{n}" for n in NAMES)):
        assert 0.0 <= float(scores[-1][name]) <= 1.0, name
    with open(run / "segmentation" / "per_class_iou.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["class"] for row in table] == NAMES * 2
    assert {row["epoch"] for row in table} == {"0", "1"}
    last = {row["class"]: float(row["iou"]) for row in table if row["epoch"] == "1"}
    assert last == pytest.approx({n: float(scores[-1][f"val/IoU/{n}"]) for n in NAMES})
    picture = Image.open(run / "segmentation" / "epoch=0001.png")
    assert picture.width == 3 * 30 + 8  # image | ground truth | prediction of the first batch, padded to 30 wide

    main(["predict", *camvid_args(root, "--config", PREDICT), "--ckpt_path", str(root / "runs/checkpoints/last.ckpt")])
    written = sorted((root / "runs" / "version_1" / "predictions").glob("frame_???.png"))
    assert [p.name for p in written] == [f"frame_{i:03d}.png" for i in range(5)]
    for path in written:
        mask = Image.open(path)
        image = Image.open(root / "scenes" / "val" / "images" / path.name)
        assert mask.mode == "P" and mask.size == image.size  # cropped back from the padded batch
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2}
        assert Image.open(path.with_name(path.stem + "_overlay.png")).size == image.size


def test_a_segmenter_whose_classes_differ_from_the_data_stops_at_setup(segmentation_data, run_in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *camvid_args(segmentation_data, "--model.init_args.model.init_args.num_classes", "4")])
    assert "num_classes=4 and the data num_classes=3" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_validation_scores_what_one_process_does(segmentation_data):
    root = segmentation_data
    main(["fit", *camvid_args(root, "--trainer.max_epochs", "1")])
    checkpoint = str(root / "runs" / "checkpoints" / "last.ckpt")
    scores = {}
    for devices in (1, 2):
        extra = ["--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto"]
        result = run_cli(root, "validate", *camvid_args(root, *extra), "--ckpt_path", checkpoint)
        # 5 validation images on 2 processes: the sampler repeats one, which must not count twice.
        scores[devices] = re.search(r"val: (mIoU .*)", result.stdout + result.stderr).group(1)
    assert scores[1] == scores[2]


ADE20K = str(CONFIGS / "segment" / "ade20k_vit_base.yaml")


def test_the_ade20k_config_is_the_papers_recipe_and_trains_a_step_on_its_layout(tmp_path, run_in_tmp):
    # The ADE20K layout, labels 0 ("other") .. 150, reduced to 0..149 with 0 ignored.
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (tmp_path / "ade" / "images" / split).mkdir(parents=True)
        (tmp_path / "ade" / "annotations" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                tmp_path / "ade" / "images" / split / f"ADE_{split}_{i}.jpg"
            )
            labels = rng.integers(0, 151, (40, 56), dtype=np.uint8)
            Image.fromarray(labels).save(tmp_path / "ade" / "annotations" / split / f"ADE_{split}_{i}.png")
    tiny = ["--model.init_args.pretrained", "null", "--data.init_args.root", str(tmp_path / "ade")]
    tiny += [f"--model.init_args.model.init_args.{k}={v}" for k, v in dict(patch_size=16, embed_dim=32, depth=4,
             num_heads=2, head_channels=16, auxiliary_channels=8).items()]  # fmt: skip
    tiny += ["--data.init_args.img_size", "[32, 48]", "--data.init_args.num_workers", "0", *QUIET]
    tiny += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]
    tiny += ["--trainer.sync_batchnorm", "false", "--trainer.precision", "32"]
    tiny += ["--model.init_args.eval_crop", "[32, 48]", "--model.init_args.eval_stride", "[16, 32]"]
    cli = main(["fit", "--config", ADE20K, *tiny, "--trainer.fast_dev_run", "1"])

    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert (module.lr, module.layer_decay, module.weight_decay, module.betas) == (1e-4, 0.65, 0.05, (0.9, 0.999))
    assert (module.lr_decay, module.auxiliary_weight, module.eval_mode) == ("poly", 0.4, "slide")
    assert (module.num_classes, data.num_classes, data.ignore_index, len(data.class_names)) == (150, 150, 255, 150)
    assert cli.config_init["fit"]["trainer"]["max_steps"] == 160000
    assert trainer.global_step == 1
    raw = torch.from_numpy(np.asarray(Image.open(data.train_set.samples[0][1])).astype(np.int64))
    assert torch.equal(data.mask_labels(raw, "x"), torch.where(raw == 0, 255, raw - 1))


FSDP = """
trainer:
  devices: 2
  strategy:
    class_path: cli_plugins.CPUFSDPStrategy
    init_args:
      auto_wrap_policy: [mae_lightning.models.vit.Block]
      state_dict_type: full
  callbacks+:
    - class_path: cli_plugins.OptimizerGroupSizes
      init_args: {dirpath: groups}
"""


@pytest.mark.slow
def test_segmentation_under_fsdp_keeps_the_layer_decay_groups_and_validates(segmentation_data):
    """Two FSDP processes train and validate (images of several sizes, one pass each on every process); per
    (weight decay, lr scale), the shards of both ranks hold exactly the unwrapped segmenter's elements."""
    from mae_lightning import Segmenter
    from mae_lightning.optim import param_groups_layer_decay

    root = segmentation_data
    (root / "fsdp.yaml").write_text(FSDP)
    result = run_cli(root, "fit", *camvid_args(root, "--config", "fsdp.yaml", "--trainer.max_epochs", "1"))
    assert re.search(r"val: mIoU [0-9.]+", result.stdout + result.stderr)

    model = Segmenter(img_size=(16, 24), patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=4, num_heads=2,
                      head_channels=16, auxiliary_channels=8)  # fmt: skip
    expected: dict[tuple[float, float], int] = {}
    for group in param_groups_layer_decay(model, 0.05, 0.65, no_weight_decay=model.no_weight_decay()):
        key = (group["weight_decay"], group["lr_scale"])
        expected[key] = expected.get(key, 0) + sum(p.numel() for p in group["params"])
    assert len(expected) == 12  # 6 depths (embedding, 4 blocks, the head) x (decay, no decay)
    assert summed_groups(root / "groups", 2) == expected
