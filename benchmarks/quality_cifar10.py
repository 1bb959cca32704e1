"""Does MAE pretraining beat random initialisation? kNN and linear probe on CIFAR-10, on a CPU.

Step 1 pretrains with ``benchmarks/quality_cifar10.yaml`` (see RESULTS.md for the command). This
script (step 2) rebuilds the encoder from the checkpoint alone, and the same architecture at its
random MAE initialisation (seed 0), encodes the CIFAR-10 JPEG folders with both (train 50,000,
test 10,000; evaluation transform, no masking, no augmentation) and reports, for the cls token
and for the mean patch token of each:

* kNN top-1 (cosine, k=20, T=0.07; train features as the bank, test features as queries);
* linear-probe top-1: the paper's head (BatchNorm1d(affine=False) + Linear, weights at std 0.01)
  trained with LARS (base lr 0.1 scaled by batch/256, momentum 0.9, no weight decay, warmup then
  cosine) on the cached features.

Caching the features (no augmentation during the probe) keeps this within a CPU budget; the
``LinearProbe`` module runs the full protocol, with augmentation, on a GPU.

    python benchmarks/quality_cifar10.py --root <cifar10> --checkpoint runs/quality_cifar10/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from mae_lightning import ImageFolderDataModule, MAEPretraining, MaskedAutoencoder
from mae_lightning.feature_probes import knn_top1, linear_probe_top1

CONFIG = Path(__file__).with_name("quality_cifar10.yaml")
POOLS = ("cls", "mean")


@torch.no_grad()
def encode(model: MaskedAutoencoder, loader: DataLoader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every image for each pool ("cls", "mean": (N, D) each) and the labels (N,)."""
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {pool: [] for pool in POOLS}
    labels = []
    for imgs, targets in loader:
        tokens = model.forward_features(imgs)  # (B, 1 + L, D) after the encoder's final norm
        feats["cls"].append(tokens[:, 0])
        feats["mean"].append(tokens[:, 1:].mean(dim=1))
        labels.append(targets)
    return {pool: torch.cat(f) for pool, f in feats.items()}, torch.cat(labels)


def evaluate(features: dict, num_classes: int, probe_epochs: int, probe_batch_size: int) -> dict[str, dict]:
    """kNN and linear-probe top-1 for each pool of one encoder's cached features."""
    results = {}
    for pool in POOLS:
        train = (features["train"][0][pool], features["train"][1])
        test = (features["test"][0][pool], features["test"][1])
        results[pool] = {
            "knn_top1": round(knn_top1(train, test, num_classes, k=20, temperature=0.07), 4),
            "linear_probe_top1": round(linear_probe_top1(train, test, num_classes, probe_epochs, probe_batch_size), 4),
        }
    return results


def encoders(checkpoint: str) -> dict[str, MaskedAutoencoder]:
    """The pretrained model, rebuilt from its checkpoint alone, and a copy at its random initialisation."""
    pretrained = MAEPretraining.load_from_checkpoint(checkpoint, map_location="cpu").model
    random_init = copy.deepcopy(pretrained)
    torch.manual_seed(0)
    random_init.initialize_weights()
    return {"mae": pretrained, "random_init": random_init}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="CIFAR-10 JPEG root with train/ and test/")
    parser.add_argument("--checkpoint", required=True, help="the pretraining checkpoint (last.ckpt)")
    parser.add_argument("--probe_epochs", type=int, default=1000)
    parser.add_argument("--probe_batch_size", type=int, default=16384)
    parser.add_argument("--features", help="cache the encoded features in this file (reused when it exists)")
    parser.add_argument("--output", default="quality_cifar10.json")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.features and Path(args.features).is_file():
        cache = torch.load(args.features)
    else:
        config = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
        data = ImageFolderDataModule(
            root=args.root,
            val_dir="test",
            img_size=config["img_size"],
            in_chans=config["in_chans"],
            batch_size=512,
            eval_crop_ratio=1.0,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
        )
        # Both splits with the evaluation transform: features of the images as they are.
        splits = {
            "train": data.build_dataset("train", data.eval_transform),
            "test": data.build_dataset("val", data.eval_transform),
        }
        loaders = {name: DataLoader(dataset, batch_size=512, num_workers=1) for name, dataset in splits.items()}
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        cache = {
            "num_classes": len(splits["train"].classes),
            "checkpoint": {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]},
            "features": {
                name: {split: encode(model, loader) for split, loader in loaders.items()}
                for name, model in encoders(args.checkpoint).items()
            },
        }
        if args.features:
            torch.save(cache, args.features)
    encoded = time.perf_counter() - start

    results = {
        "checkpoint": cache["checkpoint"],
        "train_images": len(cache["features"]["mae"]["train"][1]),
        "test_images": len(cache["features"]["mae"]["test"][1]),
        "probe": {"epochs": args.probe_epochs, "batch_size": args.probe_batch_size},
    }
    for name, features in cache["features"].items():
        results[name] = evaluate(features, cache["num_classes"], args.probe_epochs, args.probe_batch_size)
        print(name, json.dumps(results[name]), flush=True)
    results["seconds"] = {"encode": round(encoded, 1), "total": round(time.perf_counter() - start, 1)}
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
