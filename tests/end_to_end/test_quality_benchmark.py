"""The CPU quality benchmark end to end on real CIFAR-10 JPEGs: its config pretrains, its script probes."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from mae_lightning.cli import main
from tests.helpers import REPO

BENCHMARK = REPO / "benchmarks" / "quality_cifar10"


def test_quality_benchmark_pretrains_and_probes_real_images(cifar10_subset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", f"{BENCHMARK}.yaml", "--data.init_args.root", str(cifar10_subset),
        "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "2",
    ])  # fmt: skip
    checkpoint = tmp_path / "runs" / "quality_cifar10" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    command = [sys.executable, f"{BENCHMARK}.py", "--root", str(cifar10_subset), "--checkpoint", str(checkpoint)]
    command += ["--probe_epochs", "3", "--probe_batch_size", "256", "--features", "features.pt"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "quality_cifar10.json").read_text())
    assert report["checkpoint"] == {"epoch": 1, "global_step": 4}
    assert (report["train_images"], report["test_images"]) == (2000, 500)  # every image of the subset
    for encoder in ("mae", "random_init"):
        for pool in ("cls", "mean"):
            for metric in ("knn_top1", "linear_probe_top1"):
                assert 0.0 <= report[encoder][pool][metric] <= 1.0

    # The cached features: the pretrained encoder and its random initialisation are different networks.
    cache = torch.load(tmp_path / "features.pt")
    mae, random_init = (cache["features"][name]["test"] for name in ("mae", "random_init"))
    assert mae[0]["cls"].shape == (500, 128) and torch.equal(mae[1], random_init[1])
    assert not torch.allclose(mae[0]["mean"], random_init[0]["mean"])
