"""Two real DDP processes on CPU (gloo) train exactly like one process with the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "ddp_run.py"
BATCH, STEPS, BASE_LR = 4, 3, 2e-2


def run(devices: int, batch_size: int, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)  # a clean start, whatever launched pytest
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


MONITORED_RUN = """
seed_everything: 0
model:
  class_path: mae_lightning.MAEPretraining
  init_args:
    model:
      class_path: mae_lightning.MaskedAutoencoder
      init_args: {patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2,
                  decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2}
    warmup_epochs: 0
data:
  class_path: mae_lightning.DigitsDataModule
  init_args: {img_size: 16, batch_size: 32, num_workers: 0}
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_epochs: 2
  limit_train_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: logs, name: ddp}
  callbacks:
    - class_path: mae_lightning.KNNMonitor
      init_args: {num_classes: 10}
    - class_path: mae_lightning.ReconstructionCallback
      init_args: {every_n_epochs: 1}
"""


@pytest.mark.slow
def test_monitors_under_two_process_ddp_gather_all_images_and_draw_once(tmp_path):
    import csv

    from mae_lightning import DigitsDataModule, MAEPretraining
    from mae_lightning.callbacks.knn import knn_scores

    (tmp_path / "run.yaml").write_text(MONITORED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = "1"  # two processes share the cores
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "mae_lightning", "fit", "--config", "run.yaml"]
    # A collective call on one rank only would hang here until the timeout.
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    log_dir = tmp_path / "logs" / "ddp" / "version_0"
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    knn = {int(r["epoch"]): float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")}
    psnr = {int(r["epoch"]): float(r["val/recon_psnr_masked"]) for r in rows if r.get("val/recon_psnr_masked")}
    online = [r["val/online_linear_top1"] for r in rows if r.get("val/online_linear_top1")]
    assert sorted(knn) == sorted(psnr) == [0, 1] and len(online) == 2
    # Rank zero alone draws: one grid per epoch, nothing from the other process.
    assert sorted(p.name for p in (log_dir / "reconstructions").iterdir()) == ["epoch=0000.png", "epoch=0001.png"]

    # The kNN saw the validation images of both processes: it matches one process encoding all 297 with the
    # final weights (the sampler pads the split to 298 by repeating one image, which can move a vote or two).
    (checkpoint,) = (log_dir / "checkpoints").glob("epoch=1-*.ckpt")
    model = MAEPretraining.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    data = DigitsDataModule(img_size=16, num_workers=0)
    val = data.build_dataset("val", data.eval_transform)
    imgs = torch.stack([val[i][0] for i in range(len(val))])
    targets = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        features = model.forward_features(imgs)[:, 0]
    scores = knn_scores(features, features, targets, 10, k=20, temperature=0.07, exclude_self=True)
    single_process = (scores.argmax(dim=1) == targets).float().mean().item()
    assert knn[1] == pytest.approx(single_process, abs=3 / len(val))
