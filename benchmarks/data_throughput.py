"""Images per second of the training data pipeline, per DataLoader worker: PIL against tensor decoding,
image folders against litdata shards.

    python benchmarks/data_throughput.py --cifar10-tar ../shared/data/cifar10-jpeg.tar.gz

Two image sets: the CIFAR-10 JPEG folders (32x32) and 224 px training crops from ImageNet-sized
JPEGs (500x375, quality 90), written from the CIFAR images by bicubic upscaling plus fine
noise so that they decode like photographs. For each set, each decode path of
``ImageFolderDataModule`` (``pil``: decode + crop + float + normalise in the workers; ``tensor``:
decode + crop on uint8 in the workers, normalise after the transfer) and each worker count,
the script iterates the training DataLoader and reports images/s and images/s per worker, reading the
image folder (``ImageFolderDataModule``) and the same images as litdata shards written by
``python -m mae_lightning.prepare`` (``StreamingDataModule``, local shards).
The tensor path's normalisation runs on the batch as the DataModule's ``on_after_batch_transfer``
would on the device (here the CPU, so it is counted).
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae_lightning.data import ImageFolderDataModule, StreamingDataModule
from mae_lightning.prepare import prepare


def extract_cifar(archive: Path, out: Path, per_class: int) -> Path:
    """train/<class>/*.jpg with ``per_class`` images per class, streamed out of the archive once."""
    counts: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or "train" not in parts:
                continue
            label = parts[-2]
            if counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            target = out / "cifar10" / "train" / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return out / "cifar10"


def write_large_jpegs(source: Path, out: Path, count: int) -> Path:
    """ImageNet-sized JPEGs (500x375, quality 90) made from the CIFAR images."""
    rng = np.random.default_rng(0)
    files = sorted(source.rglob("*.jpg"))[:count]
    for i, path in enumerate(files):
        img = Image.open(path).convert("RGB").resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
        target = out / "large" / "train" / path.parent.name / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)
    return out / "large"


def images_per_second(
    source: str, root: Path, img_size: int, decode: str, workers: int, batches: int, batch_size: int
) -> float:
    data_module = ImageFolderDataModule if source == "folder" else StreamingDataModule
    dm = data_module(
        root=root, img_size=img_size, decode=decode, batch_size=batch_size, num_workers=workers, pin_memory=False
    )
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        imgs, targets = dm.on_after_batch_transfer(next(loader), 0)
    elapsed = time.perf_counter() - start
    assert imgs.dtype == torch.float32
    return batches * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar10-tar", type=Path, default=Path("../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per worker; the main process only collates

    with tempfile.TemporaryDirectory() as tmp:
        cifar = extract_cifar(args.cifar10_tar, Path(tmp), per_class=400)
        large = write_large_jpegs(cifar, Path(tmp), count=1500)
        shards = {name: Path(tmp) / f"{name}-shards" for name in ("cifar", "large")}
        for name, folder in (("cifar", cifar), ("large", large)):
            prepare(folder, shards[name], ["train"], workers=2, chunk_bytes="64MB")
        print("| images | source | decode | workers | img/s | img/s per worker |")
        print("|---|---|---|---|---|---|")
        sets = (("CIFAR-10 JPEG 32 px", "cifar", cifar, 32), ("500x375 JPEG -> 224 px", "large", large, 224))
        for name, key, folder, size in sets:
            for source, root in (("folder", folder), ("shards", shards[key])):
                for decode in ("pil", "tensor"):
                    for workers in args.workers:
                        rate = images_per_second(source, root, size, decode, workers, args.batches, args.batch_size)
                        cells = [name, source, decode, workers, f"{rate:.0f}", f"{rate / max(workers, 1):.0f}"]
                        print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
