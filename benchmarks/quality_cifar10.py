"""Does MAE pretraining beat random initialisation? kNN and linear probe on CIFAR-10, on a CPU.

Step 1 pretrains with ``benchmarks/quality_cifar10.yaml`` (see RESULTS.md for the command). This
script (step 2) encodes the CIFAR-10 JPEG folders (train 50,000, test 10,000; evaluation transform,
no augmentation) with the pretrained encoder and with the same architecture at its random MAE
initialisation, then reports for each:

* kNN top-1 (cosine, k=20, T=0.07; train features as the bank, test features as queries);
* linear-probe top-1: the paper's head (BatchNorm1d(affine=False) + Linear) trained with LARS
  (base lr 0.1, batch 256, no weight decay, warmup then cosine) on the cached cls-token features.

Caching the features (no augmentation during the probe) keeps this within a CPU budget; the
``LinearProbe`` module does the full protocol with augmentation on a GPU.

    python benchmarks/quality_cifar10.py --root <cifar10> --checkpoint runs/quality_cifar10/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from mae_lightning import ImageFolderDataModule
from mae_lightning.callbacks.knn import knn_scores
from mae_lightning.models import VisionTransformer, load_pretrained_encoder
from mae_lightning.optim import LARS, warmup_cosine_lr

CONFIG = Path(__file__).with_name("quality_cifar10.yaml")


def encoder_from_config(num_classes: int = 0, pool: str = "cls") -> VisionTransformer:
    """The benchmark's encoder at the MAE initialisation: cls-token features, or the mean patch token (``fc_norm``)."""
    config = yaml.safe_load(CONFIG.read_text())
    arch = config["model"]["init_args"]["model"]["init_args"]
    data = config["data"]["init_args"]
    return VisionTransformer(
        img_size=data["img_size"],
        in_chans=data["in_chans"],
        patch_size=arch["patch_size"],
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        num_classes=num_classes,
        global_pool=pool == "mean",
    )


@torch.no_grad()
def encode(model: VisionTransformer, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    feats, labels = [], []
    for imgs, targets in loader:
        feats.append(model.forward_features(imgs))
        labels.append(targets)
    return torch.cat(feats), torch.cat(labels)


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    epochs: int,
    batch_size: int = 256,
    base_lr: float = 0.1,
    warmup_epochs: int = 5,
    seed: int = 0,
) -> float:
    """The paper's probe head on cached features; returns test top-1."""
    torch.manual_seed(seed)
    x, y = train
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), linear)
    peak_lr = base_lr * batch_size / 256
    opt = LARS(head.parameters(), lr=peak_lr, weight_decay=0.0)
    steps = len(x) // batch_size
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(x))
        for step in range(steps):
            lr = warmup_cosine_lr(epoch + step / steps, peak_lr, 0.0, warmup_epochs, epochs)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        return (head(test[0]).argmax(1) == test[1]).float().mean().item()


def evaluate(name: str, model: VisionTransformer, train_loader, test_loader, num_classes: int, probe_epochs: int):
    start = time.perf_counter()
    train = encode(model, train_loader)
    test = encode(model, test_loader)
    encoded = time.perf_counter() - start
    knn = knn_scores(test[0], train[0], train[1], num_classes, k=20, temperature=0.07)
    knn_top1 = (knn.argmax(1) == test[1]).float().mean().item()
    probe_top1 = linear_probe(train, test, num_classes, probe_epochs)
    result = {
        "knn_top1": knn_top1,
        "linear_probe_top1": probe_top1,
        "encode_seconds": round(encoded, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(name, json.dumps(result), flush=True)
    return result


def balanced_subset(dataset, per_class: int | None):
    """The first ``per_class`` images of every class (all of them when None), in folder order."""
    if per_class is None:
        return dataset
    counts: dict[int, int] = {}
    keep = []
    for index, target in enumerate(dataset.targets):
        if counts.get(target, 0) < per_class:
            counts[target] = counts.get(target, 0) + 1
            keep.append(index)
    return Subset(dataset, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="CIFAR-10 JPEG root with train/ and test/")
    parser.add_argument("--checkpoint", required=True, help="the pretraining checkpoint (last.ckpt)")
    parser.add_argument("--probe_epochs", type=int, default=30)
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="features: cls token or mean token")
    parser.add_argument("--train_per_class", type=int, default=None, help="balanced subset of the training split")
    parser.add_argument("--test_per_class", type=int, default=None, help="balanced subset of the test split")
    parser.add_argument("--output", default="quality_cifar10.json")
    args = parser.parse_args()

    config = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    data = ImageFolderDataModule(
        root=args.root,
        val_dir="test",
        img_size=config["img_size"],
        in_chans=config["in_chans"],
        batch_size=512,
        num_workers=1,
        eval_crop_ratio=1.0,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    # Both splits with the evaluation transform: features of the images as they are.
    train_set = data.build_dataset("train", data.eval_transform)
    test_set = data.build_dataset("val", data.eval_transform)
    num_classes = len(train_set.classes)
    train_set = balanced_subset(train_set, args.train_per_class)
    test_set = balanced_subset(test_set, args.test_per_class)
    loaders = [DataLoader(s, batch_size=512, num_workers=1) for s in (train_set, test_set)]

    torch.manual_seed(0)
    random_init = encoder_from_config(pool=args.pool)
    pretrained = encoder_from_config(pool=args.pool)
    load_pretrained_encoder(pretrained, args.checkpoint)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    results = {
        "checkpoint": {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]},
        "mae": evaluate("mae", pretrained, *loaders, num_classes, args.probe_epochs),
        "random_init": evaluate("random_init", random_init, *loaders, num_classes, args.probe_epochs),
        "probe_epochs": args.probe_epochs,
        "pool": args.pool,
        "train_images": len(train_set),
        "test_images": len(test_set),
    }
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
