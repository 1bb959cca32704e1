"""Audio MAE on spoken digits at a CPU budget: the masking strategies, and the MAE start against random initialisation.

    python benchmarks/audio_fsdd.py --data data/fsdd --out /tmp/fsdd_runs

Runs, one after the other, in ``--out`` (``--data`` as seen from there):

1. ``configs/audio/fsdd.yaml``: MAE pretraining on the 2,700 training recordings with each masking strategy of
   Audio-MAE's comparison (random, time, frequency, time + frequency), the same budget each; the kNN monitor's
   accuracy on the 300 test recordings at the end of each;
2. the kNN accuracy of the same encoder at its random initialisation (``validate`` without weights);
3. ``configs/audio/fsdd_finetune.yaml`` from the random-masking MAE, and from random initialisation (the same
   network, data, augmentation, epochs and lr, the size stated, ``layer_decay: 1.0``: no pretrained features to keep);
4. ``configs/audio/fsdd_linprobe.yaml`` of the random-masking MAE and of the random encoder.

``--parts`` runs some of the steps: ``masking`` (1), ``untrained`` (2), ``transfer`` (3 and 4).

Prints the minutes of each run and a Markdown table of the scores read from each run's ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "audio"
MASKINGS = {
    "random": "mae_lightning.RandomMasking",
    "time": "mae_lightning.TimeMasking",
    "frequency": "mae_lightning.FrequencyMasking",
    "time_frequency": "mae_lightning.TimeFrequencyMasking",
}
# configs/audio/fsdd.yaml's encoder, stated for the runs from random initialisation.
ENCODER = {"patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}


def cli(subcommand: str, args: list[str], cwd: Path, log: Path) -> float:
    """``python -m mae_lightning <subcommand> <args>`` in ``cwd``, its output in ``log``: the minutes it took."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mae_lightning", subcommand, *args], cwd=cwd, capture_output=True,
                            text=True)  # fmt: skip
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        raise RuntimeError(f"{subcommand} {' '.join(args)} failed; see {log}")
    return (time.perf_counter() - start) / 60


def last(run_dir: Path, key: str) -> float:
    """The last value of ``key`` in a run's newest ``metrics.csv``."""
    version = sorted(run_dir.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    with open(version / "metrics.csv", newline="") as f:
        values = [row[key] for row in csv.DictReader(f) if row.get(key)]
    return float(values[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/fsdd", help="the FSDD folder, as seen from --out")
    parser.add_argument("--out", type=Path, required=True, help="working folder of the runs")
    steps = ["masking", "untrained", "transfer"]
    parser.add_argument(
        "--parts", nargs="+", default=steps, choices=steps,
        help="steps to run (transfer reads <out>/runs/audio_fsdd_random: the random-masking pretraining)",
    )  # fmt: skip
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = ["--data.init_args.root", args.data]
    random_init = ["--model.init_args.pretrained", "null"]
    random_init += [f"--model.init_args.model.init_args.{key}={value}" for key, value in ENCODER.items()]
    rows = []

    for name, class_path in MASKINGS.items() if "masking" in args.parts else ():
        run = f"audio_fsdd_{name}"
        masking = ["--model.init_args.model.init_args.masking", class_path, "--trainer.default_root_dir", f"runs/{run}"]
        minutes = cli("fit", ["--config", str(CONFIGS / "fsdd.yaml"), *data, *masking], out, out / f"{run}.log")
        rows.append((f"pretrain, {name} masking", minutes, "kNN top-1", last(out / "runs" / run, "val/knn_top1")))

    if "untrained" in args.parts:
        run = "audio_fsdd_untrained"
        validate = ["--config", str(CONFIGS / "fsdd.yaml"), *data, "--trainer.default_root_dir", f"runs/{run}"]
        minutes = cli("validate", validate, out, out / f"{run}.log")
        knn = last(out / "runs" / run, "val/knn_top1")
        rows.append(("random initialisation (no training)", minutes, "kNN top-1", knn))

    mae = ["--model.init_args.pretrained", "runs/audio_fsdd_random/checkpoints/last.ckpt"]
    transfers = (("fine-tune", "fsdd_finetune.yaml"), ("linear probe", "fsdd_linprobe.yaml"))
    for protocol, config in transfers if "transfer" in args.parts else ():
        for start, extra in (("MAE (random masking)", mae), ("random init", random_init)):
            if protocol == "fine-tune" and start == "random init":
                extra = [*extra, "--model.init_args.layer_decay", "1.0"]
            run = f"{config.removesuffix('.yaml')}_{'mae' if start.startswith('MAE') else 'random'}"
            where = ["--trainer.default_root_dir", f"runs/{run}"]
            minutes = cli("fit", ["--config", str(CONFIGS / config), *data, *extra, *where], out, out / f"{run}.log")
            rows.append((f"{protocol} from {start}", minutes, "test top-1", last(out / "runs" / run, "val/top1")))

    print("| run | minutes | score | value |\n|---|---|---|---|")
    for name, minutes, score, value in rows:
        print(f"| {name} | {minutes:.1f} | {score} | {100 * value:.1f} |")


if __name__ == "__main__":
    main()
