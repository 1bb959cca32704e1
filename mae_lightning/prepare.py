"""Write an image folder as litdata shards, for ``StreamingDataModule``: ``python -m mae_lightning.prepare``.

    python -m mae_lightning.prepare /data/imagenet /data/imagenet-shards --workers 16 --chunk_bytes 64MB
    aws s3 sync /data/imagenet-shards s3://my-bucket/imagenet-shards      # optional: read from object storage

Each split folder (``train`` and ``val`` by default; the whole folder as ``train`` when it has no such
sub-folders) is listed as ``ImageFolderDataModule`` lists it: class sub-folders are labels (sorted names,
as torchvision's ImageFolder), a flat folder is unlabelled (label -1). Every image is decoded once here, in
parallel: an unreadable one is skipped, counted and named in ``<output>/<split>/skipped.txt``, so training
never meets it. The images are written in a random order drawn by ``--seed``, so every shard mixes the
classes. The shards (``<output>/<split>/chunk-*.bin`` + ``index.json``) hold each file's bytes as
stored (no re-encoding), its label and its path relative to the split folder.
"""

from __future__ import annotations

import os
import random
import sys
from multiprocessing import get_context
from pathlib import Path

from jsonargparse import auto_cli

from mae_lightning.data.datasets import UnreadableImageError, is_image_file, load_image
from mae_lightning.data.folders import list_folder


def read_sample(sample: tuple[str, int, str]) -> dict:
    """One shard item: the file's bytes as stored, its label, its path relative to the split folder."""
    path, label, name = sample
    with open(path, "rb") as f:
        return {"image": f.read(), "label": label, "name": name}


def check_readable(path: str) -> str | None:
    """None if ``path`` decodes, else the reason it does not."""
    try:
        load_image(path)
        return None
    except UnreadableImageError as err:
        return str(err)


def split_folders(source: Path, splits: tuple[str, ...]) -> dict[str, Path]:
    found = {split: source / split for split in splits if (source / split).is_dir()}
    return found or {"train": source}


def readable_samples(folder: Path, workers: int) -> tuple[list[tuple[str, int, str]], list[str]]:
    """The folder's images that decode, as (path, label, relative name), and the reasons of those that do not."""
    from tqdm import tqdm

    listed = list_folder(folder)
    images = [(path, label) for path, label in listed.samples if is_image_file(path)]
    if not images:
        raise FileNotFoundError(f"no image files under {str(folder)!r}")
    with get_context("spawn").Pool(workers) as pool:
        reasons = list(
            tqdm(
                pool.imap(check_readable, [path for path, _ in images], chunksize=64),
                total=len(images),
                desc=f"checking {folder.name}",
                unit="img",
            )
        )
    pairs = zip(images, reasons, strict=True)
    good = [(path, label, os.path.relpath(path, folder)) for (path, label), bad in pairs if not bad]
    return good, [bad for bad in reasons if bad]


def prepare(
    source: Path,
    output: Path,
    splits: tuple[str, ...] = ("train", "val"),
    workers: int = os.cpu_count() or 1,
    chunk_bytes: str = "64MB",
    seed: int = 0,
) -> dict[str, dict]:
    """Write the image folder ``source`` as litdata shards under ``output/<split>``; returns the counts per split.

    Args:
        source: the image folder (ImageNet layout, or flat).
        output: where the shards go: ``<output>/<split>/``.
        splits: split sub-folders (the whole folder as ``train`` when it has none of them).
        workers: processes that check and write the images (default: all cores).
        chunk_bytes: shard size.
        seed: seed of the order the images are written in.
    """
    from litdata import optimize

    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise FileNotFoundError(f"{str(source)!r} is not a folder")
    workers = max(1, workers)
    counts = {}
    for split, folder in split_folders(source, splits).items():
        good, bad = readable_samples(folder, workers)
        # A seeded random order: every shard mixes the classes (training reads a few shards at a time).
        random.Random(seed).shuffle(good)
        target = output / split
        target.mkdir(parents=True, exist_ok=True)
        optimize(
            fn=read_sample,
            inputs=good,
            output_dir=str(target.resolve()),
            num_workers=min(workers, len(good)),
            chunk_bytes=chunk_bytes,
            mode="overwrite",
            start_method="spawn",
        )
        (target / "skipped.txt").write_text("".join(f"{reason}\n" for reason in bad))
        counts[split] = {"images": len(good), "skipped": len(bad)}
        print(f"{split}: {len(good)} images written to {target}, {len(bad)} unreadable skipped", file=sys.stderr)
    return counts


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """``python -m mae_lightning.prepare <source> <output>``: the command language of the main CLI (jsonargparse)."""
    try:
        return auto_cli(prepare, args=argv, prog="python -m mae_lightning.prepare")
    except FileNotFoundError as err:
        print(f"mae_lightning.prepare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
