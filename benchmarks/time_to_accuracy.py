"""Quality per hour: kNN top-1 against training wall-clock minutes for several pretraining recipes (CPU).

Every recipe is the quality benchmark's (``benchmarks/quality_cifar10.yaml``: ViT 6 x 128, 4x4 patches,
CIFAR-10 JPEG folders, batch 256) with a few settings changed. The recipes train one after another on the
same machine, each in its own ``python -m mae_lightning fit`` process with validation off; a callback saves
the model every ``--every`` minutes of training time and at the end. Afterwards each snapshot's encoder
encodes the 50,000 training and 10,000 test images (evaluation transform, no masking) and is scored by kNN
top-1 (mean patch token, cosine, k=20, T=0.07, train bank, test queries); the final snapshot also gets
the quality benchmark's linear probe. FLOPs per image of a training step (forward + backward, counted)
and training images/s are recorded per recipe.

    python benchmarks/time_to_accuracy.py --root <cifar10> --out tta            # every recipe
    python benchmarks/time_to_accuracy.py --root <cifar10> --out tta --recipes baseline combined
    python benchmarks/time_to_accuracy.py --out tta --plot-only                 # redraw tta/results.json
    python benchmarks/time_to_accuracy.py --root <cifar10> --out tta --recipes baseline short --finetune baseline short

With ``--finetune``, the named recipes' final encoders and a random initialisation are fine-tuned for
``--finetune_epochs`` (test top-1 after each epoch).

Writes ``<out>/results.json`` (appended recipe by recipe; a recipe already in it is not run again) and
``<out>/time_to_accuracy.png`` (needs matplotlib: the ``bench`` extra). Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parent
CONFIG = BENCHMARKS / "quality_cifar10.yaml"
MAE = "model.init_args.model.init_args"  # where the network's settings sit in the config

# name -> (settings changed from quality_cifar10.yaml, as dotted config keys).
# "Half" recipes run a 4-epoch schedule (warmup and cosine scaled with it): the target is the baseline's
# 8-epoch kNN in at most half its wall time.
HALF = {"trainer.max_epochs": 4, "model.init_args.warmup_epochs": 0.5}
RECIPES: dict[str, dict] = {
    "baseline": {},
    "short": HALF,  # the baseline's settings on the half-length schedule
    "short_compiled": {**HALF, "model.init_args.compile": True},  # and the training step under torch.compile
    "partial": {**HALF, f"{MAE}.decoder_keep_ratio": 0.5},
    "cross": {**HALF, f"{MAE}.decoder": "cross"},
    # "MAE are secretly efficient learners": a higher mask ratio and a lighter decoder.
    "efficient": {**HALF, "model.init_args.mask_ratio": 0.85, f"{MAE}.decoder_depth": 1},
    "combined": {
        **HALF,
        "model.init_args.mask_ratio": 0.85,
        f"{MAE}.decoder": "cross",
        f"{MAE}.decoder_keep_ratio": 0.5,
    },
}


class WallClockSnapshots(Callback):
    """Saves the MAE's weights when training starts, every ``every_minutes`` of training time and at the end.

    Training time runs from the first batch and leaves out the time spent saving.
    """

    def __init__(self, dirpath: str, every_minutes: float) -> None:
        self.dirpath = Path(dirpath)
        self.every = every_minutes * 60
        self.start = 0.0
        self.paused = 0.0
        self.next_mark = self.every

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.save(trainer, pl_module)  # the initial weights: minute 0 of every curve
        self.start, self.paused = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self.elapsed() >= self.next_mark:
            self.save(trainer, pl_module)
            self.next_mark += self.every

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save(trainer, pl_module)

    def save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = self.elapsed() if self.start else 0.0
        pause = time.perf_counter()
        snapshot = {"seconds": seconds, "step": trainer.global_step, "state_dict": pl_module.model.state_dict()}
        torch.save(snapshot, self.dirpath / f"step{trainer.global_step:06d}.pt")
        self.paused += time.perf_counter() - pause


def set_key(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def recipe_config(name: str, root: str, run_dir: Path, every_minutes: float) -> dict:
    """The quality benchmark's config with the recipe's settings, validation off and snapshots on."""
    config = yaml.safe_load(CONFIG.read_text())
    for key, value in RECIPES[name].items():
        set_key(config, key, value)
    config["data"]["init_args"]["root"] = root
    trainer = config["trainer"]
    trainer.update(limit_val_batches=0, default_root_dir=str(run_dir), enable_checkpointing=True)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "log", "version": 0},
    }
    trainer["callbacks"] = [
        {
            "class_path": "time_to_accuracy.WallClockSnapshots",
            "init_args": {"dirpath": str(run_dir / "snapshots"), "every_minutes": every_minutes},
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, "save_top_k": 0},
        },
    ]
    return config


def pretrain(name: str, root: str, out: Path, every_minutes: float) -> Path:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(recipe_config(name, root, run_dir, every_minutes), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "mae_lightning", "fit", "--config", str(config_file)]
    subprocess.run(command, env=env, check=True)
    return run_dir


def images(root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train and test images through the evaluation transform, (N, 3, 32, 32) and (N,), decoded once."""
    from mae_lightning import ImageFolderDataModule

    settings = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    data = ImageFolderDataModule(
        root=root,
        val_dir="test",
        img_size=settings["img_size"],
        eval_crop_ratio=1.0,
        mean=tuple(settings["mean"]),
        std=tuple(settings["std"]),
    )
    out = {}
    for split, stage in (("train", "train"), ("test", "val")):
        loader = DataLoader(data.build_dataset(stage, data.eval_transform), batch_size=1000, num_workers=1)
        batches = list(loader)
        out[split] = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    return out


@torch.inference_mode()
def mean_tokens(model, imgs: torch.Tensor) -> torch.Tensor:
    """(N, D) mean patch token of the encoder (after its final norm), no masking."""
    model.eval()
    return torch.cat([model.forward_features(chunk)[:, 1:].mean(dim=1) for chunk in imgs.split(1000)])


def step_flops(model, mask_ratio: float, batch: int = 4) -> float:
    """Forward + backward FLOPs per image of one training step."""
    model.train()
    imgs = torch.randn(batch, model.in_chans, *model.img_size)
    with FlopCounterMode(display=False) as counter:
        loss = model.forward_train(imgs, mask_ratio).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


KNN_OF_ENCODER: dict[str, float] = {}


def encoder_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the encoder's weights (everything but the decoder and the mask token)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        if not name.startswith(("decoder", "mask_token")):
            digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def evaluate(run_dir: Path, data: dict, probe_epochs: int) -> dict:
    from mae_lightning import MAEPretraining
    from mae_lightning.feature_probes import knn_top1, linear_probe_top1

    module = MAEPretraining.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    model = module.model
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    curve = []
    for path in sorted((run_dir / "snapshots").glob("step*.pt")):
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
        point = {"minutes": round(snapshot["seconds"] / 60, 2), "step": snapshot["step"]}
        fingerprint = encoder_fingerprint(snapshot["state_dict"])
        if fingerprint not in KNN_OF_ENCODER:  # the recipes start from the same encoder: scored once
            model.load_state_dict(snapshot["state_dict"])
            train = (mean_tokens(model, data["train"][0]), data["train"][1])
            test = (mean_tokens(model, data["test"][0]), data["test"][1])
            KNN_OF_ENCODER[fingerprint] = round(knn_top1(train, test, num_classes=10, k=20, temperature=0.07), 4)
        point["knn_top1"] = KNN_OF_ENCODER[fingerprint]
        curve.append(point)
        print(run_dir.name, point, flush=True)
    final = curve[-1]  # the last snapshot scored above: train and test hold its features
    batch_size = config["data"]["init_args"]["batch_size"]
    final["linear_probe_top1"] = round(linear_probe_top1(train, test, 10, probe_epochs, 16384), 4)
    return {
        "settings": RECIPES[run_dir.name],
        "curve": curve,
        "final": final,
        "train_images_per_s": round(final["step"] * batch_size / (final["minutes"] * 60), 1),
        "gflops_per_image": round(step_flops(model, module.mask_ratio) / 1e9, 4),
    }


def finetune_config(root: str, run_dir: Path, pretrained: Path | None, epochs: int, batches: int | None) -> dict:
    """A short fine-tuning run (the paper's recipe without MixUp/CutMix) on the CIFAR-10 folders."""
    settings = yaml.safe_load(CONFIG.read_text())
    vit = {"num_classes": 10, "global_pool": True, "drop_path_rate": 0.1}
    if pretrained is None:  # random init: the pretraining network's encoder size, stated
        size = settings["model"]["init_args"]["model"]["init_args"]
        vit.update({key: size[key] for key in ("patch_size", "embed_dim", "depth", "num_heads")})
    data = {key: settings["data"]["init_args"][key] for key in ("img_size", "in_chans", "mean", "std")}
    data.update(root=root, val_dir="test", batch_size=256, num_workers=1, decode="tensor", augmentation="finetune")
    return {
        "seed_everything": 0,
        "model": {
            "class_path": "mae_lightning.FineTune",
            "init_args": {
                "pretrained": None if pretrained is None else str(pretrained),
                "model": {"class_path": "mae_lightning.VisionTransformer", "init_args": vit},
                "base_lr": 1.0e-3,
                "weight_decay": 0.05,
                "warmup_epochs": 0.5,
                "layer_decay": 0.75,
                "mixup": 0.0,
                "cutmix": 0.0,
                "label_smoothing": 0.1,
            },
        },
        "data": {"class_path": "mae_lightning.ImageFolderDataModule", "init_args": data},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": epochs,
            "limit_train_batches": batches,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(run_dir),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "log", "version": 0},
            },
        },
    }


def finetune(name: str, root: str, out: Path, pretrained: Path | None, epochs: int, batches: int | None) -> dict:
    """Fine-tune ``pretrained`` (None: random init) for ``epochs`` of ``batches`` (None: all) batches of 256;
    test top-1 after each epoch and the minutes."""
    run_dir = out / "finetune" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.yaml"
    config = finetune_config(root, run_dir, pretrained, epochs, batches)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mae_lightning", "fit", "--config", str(config_file)], check=True)
    minutes = round((time.perf_counter() - start) / 60, 1)
    with open(run_dir / "log" / "version_0" / "metrics.csv", newline="") as f:
        top1 = [round(float(row["val/top1"]), 4) for row in csv.DictReader(f) if row.get("val/top1")]
    return {"pretrained": str(pretrained), "epochs": epochs, "batches": batches, "val_top1": top1, "minutes": minutes}


def table(results: dict) -> str:
    """The results as Markdown: one row per recipe, then the fine-tuning runs."""
    recipes = pretraining_results(results)
    half = recipes["baseline"]["final"]["minutes"] / 2 if "baseline" in recipes else None
    lines = [
        "| recipe | GFLOPs/img (fwd+bwd) | train img/s | minutes | kNN top-1 at the end | best kNN (minute) "
        "| kNN at half the baseline's time | linear probe |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in recipes.items():
        curve, final = result["curve"], result["final"]
        best = max(curve, key=lambda p: p["knn_top1"])
        within_half = [p["knn_top1"] for p in curve if half is not None and p["minutes"] <= half]
        cells = [
            name,
            f"{result['gflops_per_image']:.3f}",
            f"{result['train_images_per_s']:.0f}",
            f"{final['minutes']:.1f}",
            f"{100 * final['knn_top1']:.1f}%",
            f"{100 * best['knn_top1']:.1f}% ({best['minutes']:.1f})",
            f"{100 * max(within_half):.1f}%" if within_half else "-",
            f"{100 * final['linear_probe_top1']:.1f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    finetuned = results.get("finetune", {})
    if finetuned:
        lines += ["", "| fine-tuned from | test top-1 after each epoch | minutes |", "| --- | --- | --- |"]
        for name, run in finetuned.items():
            top1 = ", ".join(f"{100 * v:.1f}%" for v in run["val_top1"])
            lines.append(f"| {name} | {top1} | {run['minutes']} |")
    return "\n".join(lines)


def pretraining_results(results: dict) -> dict:
    return {name: result for name, result in results.items() if name in RECIPES}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in pretraining_results(results).items():
        curve = result["curve"]
        ax.plot([p["minutes"] for p in curve], [100 * p["knn_top1"] for p in curve], marker="o", label=name)
    if "baseline" in results:
        ax.axhline(100 * results["baseline"]["final"]["knn_top1"], color="grey", linestyle=":", linewidth=1)
        ax.axvline(results["baseline"]["final"]["minutes"] / 2, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training wall-clock minutes (2 CPU cores)")
    ax.set_ylabel("kNN top-1 on CIFAR-10 test (%), mean token")
    ax.set_title("MAE pretraining recipes: quality per minute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="CIFAR-10 JPEG root with train/ and test/")
    parser.add_argument("--out", required=True, type=Path, help="folder for runs, results.json and the picture")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--every", type=float, default=5.0, help="minutes of training between snapshots")
    parser.add_argument("--probe_epochs", type=int, default=1000)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--finetune", nargs="*", metavar="RECIPE",
        help="after pretraining, fine-tune these recipes' final encoders and a random init for --finetune_epochs",
    )  # fmt: skip
    parser.add_argument("--finetune_epochs", type=int, default=2)
    parser.add_argument("--finetune_batches", type=int, help="training batches per fine-tuning epoch (default: all)")
    args = parser.parse_args()

    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not args.plot_only:
        if not args.root:
            parser.error("--root is required unless --plot-only")
        args.out.mkdir(parents=True, exist_ok=True)
        data = None
        for name in args.recipes:
            if name in results:
                continue
            run_dir = pretrain(name, args.root, args.out, args.every)
            data = data or images(args.root)
            results[name] = evaluate(run_dir, data, args.probe_epochs)
            results_file.write_text(json.dumps(results, indent=2))
        finetuned = results.setdefault("finetune", {})
        for name in [*(args.finetune or []), "random_init"] if args.finetune else []:
            if name not in finetuned:
                checkpoint = None if name == "random_init" else args.out / name / "checkpoints" / "last.ckpt"
                finetuned[name] = finetune(
                    name, args.root, args.out, checkpoint, args.finetune_epochs, args.finetune_batches
                )
                results_file.write_text(json.dumps(results, indent=2))
    plot(results, args.out / "time_to_accuracy.png")
    print(table(results))


if __name__ == "__main__":
    main()
