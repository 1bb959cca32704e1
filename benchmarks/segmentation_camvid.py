"""Segmentation on CamVid at a CPU budget: the MAE start against random initialisation, both heads.

    python benchmarks/segmentation_camvid.py --data data/camvid-seg --out /tmp/camvid_runs

Runs, one after the other, in ``--out`` (``data/camvid-seg`` must be reachable from there, or give ``--data``):

1. ``configs/segment/camvid_pretrain.yaml``: MAE pretraining on the 367 training images (no labels), 150 epochs;
2. ``configs/segment/camvid.yaml`` from its checkpoint, with the UperNet head and with the linear head;
3. the same two from random initialisation: the same network, data, crops, epochs and lr, with the encoder's size
   stated instead of read from the checkpoint, and ``layer_decay: 1.0`` (layer decay keeps pretrained features;
   a random encoder has none to keep, and every block at the full lr is the stronger baseline).

Prints the minutes each run took, the last validation's mIoU, mAcc, aAcc and the per-class IoU as a Markdown table
(read from each run's ``metrics.csv``). ``--skip-pretrain`` reuses ``<out>/runs/camvid_pretrain``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "segment" / "camvid_pretrain.yaml"
SEGMENT = REPO / "configs" / "segment" / "camvid.yaml"
CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
# configs/segment/camvid_pretrain.yaml's encoder, stated for the runs from random initialisation.
ENCODER = {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3}


def segmentation_runs(data: str) -> dict[str, list[str]]:
    """Name -> the arguments of ``fit`` after the config, for the four segmentation runs."""
    random_init = ["--model.init_args.pretrained", "null", "--model.init_args.layer_decay", "1.0"]
    random_init += [f"--model.init_args.model.init_args.{key}={value}" for key, value in ENCODER.items()]
    runs = {}
    for head in ("upernet", "linear"):
        for start, extra in (("mae", []), ("random", random_init)):
            name = f"segment_camvid_{start}_{head}"
            runs[name] = [
                "--model.init_args.model.init_args.head", head,
                "--data.init_args.root", data,
                "--trainer.default_root_dir", f"runs/{name}",
                *extra,
            ]  # fmt: skip
    return runs


def run(args: list[str], cwd: Path, log: Path) -> float:
    """``python -m mae_lightning fit <args>`` in ``cwd``; the minutes it took."""
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "mae_lightning", "fit", *args], cwd=cwd, stdout=out, stderr=out, check=True
        )
    return (time.perf_counter() - start) / 60


def last_scores(run_dir: Path) -> dict[str, float]:
    """The last validation's scores in a run's ``metrics.csv`` (its newest version folder)."""
    version = sorted(run_dir.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    with open(version / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/mIoU")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("val/") and value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/camvid-seg", help="the CamVid folder, as seen from --out")
    parser.add_argument("--out", type=Path, required=True, help="working folder of the runs")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <out>/runs/camvid_pretrain")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    minutes = {}
    if not args.skip_pretrain:
        pretrain = ["--config", str(PRETRAIN), "--data.init_args.root", args.data]
        minutes["camvid_pretrain"] = run(pretrain, args.out, args.out / "camvid_pretrain.log")
    for name, extra in segmentation_runs(args.data).items():
        minutes[name] = run(["--config", str(SEGMENT), *extra], args.out, args.out / f"{name}.log")
        print(f"{name}: {minutes[name]:.1f} min", flush=True)

    print("\n| run | minutes | mIoU | mAcc | aAcc | " + " | ".join(CLASSES) + " |")
    print("|---" * (5 + len(CLASSES)) + "|")
    for name in segmentation_runs(args.data):
        scores = last_scores(args.out / "runs" / name)
        per_class = [f"{100 * scores.get(f'val/IoU/{c}', float('nan')):.1f}" for c in CLASSES]
        row = [name, f"{minutes[name]:.1f}", *(f"{100 * scores[f'val/{k}']:.1f}" for k in ("mIoU", "mAcc", "aAcc"))]
        print("| " + " | ".join(row + per_class) + " |")


if __name__ == "__main__":
    main()
