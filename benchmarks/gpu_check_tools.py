"""Helpers of ``benchmarks/gpu_check.sh``: a labelled JPEG folder, peak GPU memory, and the summary table.

    python benchmarks/gpu_check_tools.py images <root> [--per-class 256] [--size 256]
    python benchmarks/gpu_check_tools.py summary <out_dir>

``PeakMemory`` is added to a run as ``--trainer.callbacks+ '{"class_path": "gpu_check_tools.PeakMemory", ...}'``
with ``benchmarks/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image


def write_images(root: Path, per_class: int, size: int) -> None:
    """root/{train,val}/<class>/*.jpg: two classes of random-noise JPEGs with different mean colours."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(per_class // 4, 32))):
        for label, colour in enumerate(((200, 60, 60), (60, 60, 200))):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 40, (size, size, 3)) + np.array(colour)
                Image.fromarray(noise.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


class PeakMemory(Callback):
    """Write the peak GPU memory of the run (``torch.cuda.max_memory_allocated``) to ``path`` as JSON, per rank."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not torch.cuda.is_available():
            return
        peak = torch.cuda.max_memory_allocated() / 2**30
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")
        target.write_text(json.dumps({"peak_gib": round(peak, 2), "global_step": trainer.global_step}))


def summary(out_dir: Path) -> dict:
    """Per run folder under ``out_dir``: the last images/s logged, the steps, the monitors logged, peak memory."""
    table = {}
    for metrics in sorted(out_dir.glob("*/**/metrics.csv")):
        run = metrics.relative_to(out_dir).parts[0]
        rows = list(csv.DictReader(metrics.open()))
        rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
        memory = [json.loads(p.read_text()) for p in sorted((out_dir / run).glob("memory*.json"))]
        table[run] = {
            "images_per_sec_last": round(rates[-1], 1) if rates else None,
            "images_per_sec_median": round(float(np.median(rates[1:] or rates)), 1) if rates else None,
            "val_knn_top1": [r["val/knn_top1"] for r in rows if r.get("val/knn_top1")],
            "val_recon_psnr_masked": [r["val/recon_psnr_masked"] for r in rows if r.get("val/recon_psnr_masked")],
            "peak_memory": memory,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images")
    images.add_argument("root", type=Path)
    images.add_argument("--per-class", type=int, default=256)
    images.add_argument("--size", type=int, default=256)
    report = commands.add_parser("summary")
    report.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if args.command == "images":
        write_images(args.root, args.per_class, args.size)
    else:
        result = summary(args.out_dir)
        (args.out_dir / "summary.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
