"""Real multi-process runs on CPU (gloo): DDP, and Lightning's FSDP let onto the CPU (``cli_plugins.CPUFSDPStrategy``).

Two processes train like one with the doubled batch; every rank draws its own masks and resumes its own
random state; FSDP keeps the recipe's weight-decay and layer-decay groups; the monitors and ``predict``
run under DDP and FSDP; ``val/loss`` does not depend on the number of processes.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (
    DDP,
    TESTS,
    clean_env,
    read_losses,
    resumable_run,
    run_cli,
    summed_groups,
    tiny_run,
    tiny_vit,
)

SCRIPT = TESTS / "ddp_run.py"
BATCH, STEPS, BASE_LR = 4, 3, 2e-2


def metrics(log_dir: Path) -> list[dict[str, str]]:
    with open(log_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def run(devices: int, batch_size: int, out: Path) -> list[dict]:
    env = clean_env()
    command = [sys.executable, str(SCRIPT), "--devices", str(devices), "--batch-size", str(batch_size)]
    command += ["--steps", str(STEPS), "--out", str(out)]
    result = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(devices)]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_doubled_batch(tmp_path):
    (single,) = run(devices=1, batch_size=2 * BATCH, out=tmp_path / "single")
    rank0, rank1 = run(devices=2, batch_size=BATCH, out=tmp_path / "ddp")

    # The lr follows the effective batch: batch x processes.
    for result in (single, rank0, rank1):
        assert result["effective_batch_size"] == 2 * BATCH
        assert result["peak_lr"] == pytest.approx(BASE_LR * 2 * BATCH / 256)
        assert result["global_step"] == STEPS
    assert (single["world_size"], rank0["world_size"]) == (1, 2)

    # The sampler deals the samples of each doubled batch out to the two processes, without overlap.
    assert not set(rank0["seen"]) & set(rank1["seen"])
    assert len(set(single["seen"])) == 2 * BATCH * STEPS
    for step in range(STEPS):
        shard = slice(step * BATCH, (step + 1) * BATCH)
        assert set(single["seen"][2 * step * BATCH : 2 * (step + 1) * BATCH]) == set(rank0["seen"][shard]) | set(
            rank1["seen"][shard]
        )

    # The gradients are averaged over the processes: the same weights as the single process, within fp32
    # rounding. One exception: the key bias (the middle third of qkv.bias) gets a gradient that is zero in
    # exact arithmetic (softmax ignores a shift shared by all keys); AdamW divides that rounding noise by its
    # own size, so the two runs move those entries by up to lr per step in unrelated directions.
    peak_lr = BASE_LR * 2 * BATCH / 256
    moved = []
    for key, expected in single["state_dict"].items():
        got = rank0["state_dict"][key]
        assert torch.equal(rank1["state_dict"][key], got), key  # DDP keeps the replicas identical
        if key.endswith("attn.qkv.bias"):
            dim = expected.shape[0] // 3
            key_bias = slice(dim, 2 * dim)
            assert (got[key_bias] - expected[key_bias]).abs().max() <= STEPS * peak_lr
            got, expected = torch.cat([got[:dim], got[2 * dim :]]), torch.cat([expected[:dim], expected[2 * dim :]])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=key)
        if not torch.equal(single["state_dict"][key], single["initial"][key]):
            moved.append(key)
    # Every trained tensor moved (the fixed sin-cos tables do not), so the comparison above means something.
    assert sorted(set(single["state_dict"]) - set(moved)) == ["decoder_pos_embed", "pos_embed"]


DIGITS = """  class_path: mae_lightning.DigitsDataModule
  init_args: {img_size: 16, batch_size: 32, num_workers: 0}"""

MONITORS = """    - class_path: mae_lightning.KNNMonitor
      init_args: {num_classes: 10}
    - class_path: mae_lightning.ReconstructionCallback
      init_args: {every_n_epochs: 1}"""

# One FSDP unit and one activation-checkpointing region per Block, full-state-dict checkpoints: presets/fsdp.yaml.
FSDP = """  strategy:
    class_path: cli_plugins.CPUFSDPStrategy
    init_args:
      auto_wrap_policy: [mae_lightning.models.vit.Block]
      activation_checkpointing_policy: [mae_lightning.models.vit.Block]
      state_dict_type: full"""


def monitored_run(strategy: str) -> str:
    trainer = f"""{strategy}
  max_epochs: 2
  limit_train_batches: 2
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: logs, name: run}}
  callbacks:
{MONITORS}
    - class_path: cli_plugins.OptimizerGroupSizes
      init_args: {{dirpath: groups}}"""
    # fused AdamW has no CPU kernel for FSDP's flat shards in every torch version: the plain one is the same update.
    return tiny_run(DIGITS, trainer, "warmup_epochs: 0\n    fused_adamw: false")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_monitors_and_recipe_under_two_processes(tmp_path, strategy):
    """The monitors finish every epoch under DDP and FSDP (gather all images, draw once), and FSDP decays
    exactly the elements that one process decays; then ``predict`` writes one embeddings file under both."""
    from mae_lightning import DigitsDataModule, MAEPretraining
    from mae_lightning.callbacks.knn import knn_scores
    from mae_lightning.optim import param_groups_weight_decay

    (tmp_path / "run.yaml").write_text(monitored_run(DDP if strategy == "ddp" else FSDP))
    run_cli(tmp_path, "fit", "--config", "run.yaml")

    log_dir = tmp_path / "logs" / "run" / "version_0"
    rows = metrics(log_dir)
    knn = {int(r["epoch"]): float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")}
    psnr = {int(r["epoch"]): float(r["val/recon_psnr_masked"]) for r in rows if r.get("val/recon_psnr_masked")}
    online = [r["val/online_linear_top1"] for r in rows if r.get("val/online_linear_top1")]
    assert sorted(knn) == sorted(psnr) == [0, 1] and len(online) == 2
    # Rank zero alone draws: one grid per epoch, nothing from the other process.
    assert sorted(p.name for p in (log_dir / "reconstructions").iterdir()) == ["epoch=0000.png", "epoch=0001.png"]

    # The kNN saw the validation images of both processes: it matches one process encoding all 297 with the
    # final weights (the sampler pads the split to 298 by repeating one image, which can move a vote or two).
    (checkpoint,) = (log_dir / "checkpoints").glob("epoch=1-*.ckpt")
    module = MAEPretraining.load_from_checkpoint(checkpoint, map_location="cpu")
    model = module.model.eval()
    data = DigitsDataModule(img_size=16, num_workers=0)
    val = data.build_dataset("val", data.eval_transform)
    imgs = torch.stack([val[i][0] for i in range(len(val))])
    targets = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        features = model.forward_features(imgs)[:, 0]
    scores = knn_scores(features, features, targets, 10, k=20, temperature=0.07, exclude_self=True)
    single_process = (scores.argmax(dim=1) == targets).float().mean().item()
    assert knn[1] == pytest.approx(single_process, abs=3 / len(val))

    # The weight-decay groups hold exactly the elements of one unwrapped model's groups: on each rank under DDP
    # (replicas), summed over the ranks' shards under FSDP.
    expected = {
        (g["weight_decay"], 1.0): sum(p.numel() for p in g["params"]) for g in param_groups_weight_decay(model, 0.05)
    }
    if strategy == "ddp":
        assert summed_groups(tmp_path / "groups", 1) == expected
        assert (tmp_path / "groups" / "groups_rank1.json").read_text() == (
            tmp_path / "groups" / "groups_rank0.json"
        ).read_text()
    else:
        assert summed_groups(tmp_path / "groups", 2) == expected

    # predict on both processes: one file, every validation image once, in dataset order, equal to one process.
    # Batches of 4: 297 images do not split into equal numbers of batches, which FSDP's forward needs.
    run_cli(
        tmp_path, "predict", "--config", "run.yaml", "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
        "--data.init_args.batch_size", "4",
        "--trainer.callbacks", '[{"class_path": "mae_lightning.EmbeddingWriter", "init_args": {"path": "emb.npz"}},'
        ' {"class_path": "mae_lightning.ReconstructionCallback", "init_args": {"dirpath": "pictures"}}]',
    )  # fmt: skip
    written = np.load(tmp_path / "emb.npz")
    assert written["index"].tolist() == list(range(len(val)))
    assert written["target"].tolist() == targets.tolist()
    np.testing.assert_allclose(written["cls"], features.numpy(), rtol=0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["predict.png"]
    assert not list(tmp_path.glob("emb.rank*"))


def write_identical_train_distinct_val(root: Path, make_image) -> None:
    """root/train: 12 copies of one image; root/val: 8 different images (flat folders, unlabelled)."""
    make_image(root / "train" / "0.png", size=(16, 16), seed=0)
    for i in range(1, 12):
        (root / "train" / f"{i}.png").write_bytes((root / "train" / "0.png").read_bytes())
    for i in range(8):
        make_image(root / "val" / f"{i}.png", size=(16, 16), seed=100 + i)


@pytest.mark.slow
def test_ranks_draw_their_own_masks_and_val_loss_does_not_depend_on_the_process_count(tmp_path, make_image):
    """Both ranks train on the very same image with the same weights: only the masks can make their losses differ."""
    from lightning.pytorch import Trainer

    from mae_lightning import ImageFolderDataModule, MAEPretraining

    write_identical_train_distinct_val(tmp_path / "data", make_image)
    data = """  class_path: mae_lightning.ImageFolderDataModule
  init_args: {root: data, img_size: 16, batch_size: 2, num_workers: 0, crop_scale: [1.0, 1.0],
              horizontal_flip: false}"""
    trainer = f"""{DDP}
  max_epochs: 1
  limit_train_batches: 3
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: logs, name: run}}
  callbacks:
    - class_path: cli_plugins.PerRankLosses
      init_args: {{dirpath: losses}}"""
    (tmp_path / "run.yaml").write_text(tiny_run(data, trainer))
    run_cli(tmp_path, "fit", "--config", "run.yaml")

    rank0, rank1 = (read_losses(tmp_path / "losses" / f"rank{r}.txt") for r in range(2))
    assert sorted(rank0) == sorted(rank1) == [1, 2, 3]
    for step in rank0:
        assert rank0[step] != rank1[step], f"step {step}: both ranks drew the same masks"

    # The validation masks follow each image's position in the validation set, not the process that sees it:
    # the 2-process val/loss is the one of a single process validating the same weights.
    log_dir = tmp_path / "logs" / "run" / "version_0"
    (val_loss,) = [float(r["val/loss"]) for r in metrics(log_dir) if r.get("val/loss")]
    (checkpoint,) = (log_dir / "checkpoints").glob("*.ckpt")
    module = MAEPretraining.load_from_checkpoint(checkpoint, map_location="cpu")
    single = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    datamodule = ImageFolderDataModule(tmp_path / "data", img_size=16, batch_size=2, num_workers=0)
    (result,) = single.validate(module, datamodule, verbose=False)
    assert result["val/loss"] == pytest.approx(val_loss, rel=1e-6)


@pytest.mark.slow
def test_two_process_run_resumed_mid_epoch_repeats_every_ranks_losses_bit_for_bit(tmp_path, monkeypatch):
    for name in ("full", "split"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.yaml").write_text(resumable_run("losses"))
    run_cli(tmp_path / "full", "fit", "--config", "run.yaml")
    # Interrupted after step 6 of 16 (inside the first epoch of 8 steps), then resumed from last.ckpt.
    stop = '{"class_path": "cli_plugins.StopAtStep", "init_args": {"step": 6}}'
    run_cli(tmp_path / "split", "fit", "--config", "run.yaml", "--trainer.callbacks+", stop)
    assert torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    run_cli(tmp_path / "split", "fit", "--config", "run.yaml", "--ckpt_path", "last")

    for rank in range(2):
        full = read_losses(tmp_path / "full" / "losses" / f"rank{rank}.txt")
        split = read_losses(tmp_path / "split" / "losses" / f"rank{rank}.txt")
        assert sorted(full) == list(range(1, 17))
        assert split == full, f"rank {rank}"
    assert read_losses(tmp_path / "full" / "losses" / "rank0.txt") != read_losses(
        tmp_path / "full" / "losses" / "rank1.txt"
    )

    # The step-6 checkpoint resumed by one process: warned, with both counts named, and training goes on.
    from mae_lightning.cli import main

    monkeypatch.chdir(tmp_path / "split")
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    monkeypatch.syspath_prepend(str(TESTS))  # run.yaml names callbacks of cli_plugins
    with pytest.warns(UserWarning, match=r"random state of 2 process\(es\) and this run has 1"):
        main(
            ["fit", "--config", "run.yaml", "--ckpt_path", "checkpoints/epoch=0-step=6.ckpt", "--trainer.devices", "1",
             "--trainer.strategy", "auto", "--trainer.max_steps", "7", "--trainer.callbacks", "[]"]
        )  # fmt: skip


FINE_TUNE_RUN = f"""
seed_everything: 0
model:
  class_path: mae_lightning.FineTune
  init_args:
    model:
      class_path: mae_lightning.VisionTransformer
      init_args: {{patch_size: 4, embed_dim: 32, depth: 3, num_heads: 2, num_classes: 10, drop_path_rate: 0.1}}
    layer_decay: 0.75
    warmup_epochs: 0
data:
{DIGITS}
trainer:
  accelerator: cpu
  devices: 2
{FSDP}
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: cli_plugins.OptimizerGroupSizes
      init_args: {{dirpath: groups}}
"""


@pytest.mark.slow
def test_fine_tuning_under_fsdp_keeps_every_layer_decay_scale(tmp_path):
    """Per (weight decay, lr scale), the shards of both ranks hold exactly the unwrapped model's elements."""
    from mae_lightning.optim import param_groups_layer_decay

    (tmp_path / "run.yaml").write_text(FINE_TUNE_RUN)
    run_cli(tmp_path, "fit", "--config", "run.yaml")

    model = tiny_vit(depth=3)
    expected: dict[tuple[float, float], int] = {}
    for group in param_groups_layer_decay(model, 0.05, 0.75, no_weight_decay=model.no_weight_decay()):
        key = (group["weight_decay"], group["lr_scale"])
        expected[key] = expected.get(key, 0) + sum(p.numel() for p in group["params"])
    assert len(expected) == 10  # 5 depths (embedding, 3 blocks, norm + head) x (decay, no decay)
    assert summed_groups(tmp_path / "groups", 2) == expected
