"""Images from litdata shards (``python -m mae_lightning.prepare``), local or in object storage.

litdata's StreamingDataset reads the shards, fetching remote ones into a local cache as they are needed. It is
used as a map-style dataset (``dataset[index]``), so the split across processes and nodes, the per-sample
augmentation seeds and the mid-epoch resume are the ones of every other DataModule here (``data/resumable.py``);
litdata's own iteration and loader state are not used. The training order reads a few shards at a time
(``ResumableSampler``'s groups), and ``prepare`` writes the images in a seeded random order, so each shard
mixes the classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from mae_lightning.data.base import MAEDataModule

REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "azure://", "hf://")


def open_shards(location: str, cache_dir: str | None = None, max_cache_size: str = "50GB"):
    """litdata's StreamingDataset over the shards at ``location``.

    Raises:
        ModuleNotFoundError: litdata is not installed (one line: the extra to install).
        FileNotFoundError: a local location without shards.
        ConnectionError: a remote location that cannot be read (one line with the reason).
    """
    try:
        from litdata import StreamingDataset
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading shards needs litdata: pip install 'mae-lightning[streaming]'") from None
    remote = location.startswith(REMOTE_PREFIXES)
    if not remote and not os.path.isfile(os.path.join(location, "index.json")):
        raise FileNotFoundError(
            f"no shards at {location!r} (no index.json): write them with `python -m mae_lightning.prepare`"
        )
    try:
        # batch_decode off: by default litdata deserialises a window of ~70 items for every item read, which
        # suits its sequential iteration; read by index in a shuffled order that made each item ~20x slower.
        return StreamingDataset(location, cache_dir=cache_dir, max_cache_size=max_cache_size, batch_decode=False)
    except Exception as err:  # litdata and its storage clients raise many kinds; the reason is what matters
        if not remote:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConnectionError(f"cannot read the shards at {location!r}: {reason}") from None


class ShardImages(Dataset):
    """The images of one split's shards: ``(transform(image), label)`` by index.

    Args:
        shards: litdata's StreamingDataset of items ``{"image": file bytes, "label": int, "name": str}``.
        loader: decodes a file's bytes (PIL or torchvision.io).
        transform: applied to the decoded image.
    """

    def __init__(self, shards, loader: Callable, transform: Callable | None = None) -> None:
        self.shards = shards
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        # Not len(self.shards): litdata counts only this process's share when it is made in a distributed run.
        return sum(self.shard_sizes)

    @property
    def shard_sizes(self) -> list[int]:
        """How many items each shard holds, in index order (the training order reads a few shards at a time)."""
        return [end - start for start, end in self.shards.region_of_interest]

    def item(self, index: int) -> dict[str, Any]:
        """The stored item: the file's bytes, its label, its path relative to the split folder."""
        item = self.shards[index]
        return {**item, "image": bytes(item["image"])}

    def __getitem__(self, index: int):
        item = self.item(index)
        image = self.loader(item["image"])
        if self.transform is not None:
            image = self.transform(image)
        return image, item["label"]


class StreamingDataModule(MAEDataModule):
    """Images from litdata shards written by ``python -m mae_lightning.prepare``: local, ``s3://`` or ``gs://``.

    The same augmentations, decode modes, per-rank split and exact mid-epoch resume as
    :class:`ImageFolderDataModule` (see ``data/shards.py``). Remote shards are fetched into ``cache_dir``
    as they are read (litdata's cache, at most ``max_cache_size``).

    Args:
        root: the folder (or bucket prefix) holding one shard folder per split.
        train_dir: the training split's shard folder under ``root``.
        val_dir: the validation split's, or None. A local one that does not exist is skipped; a remote one
            must exist (null when the bucket holds no validation shards).
        decode: ``"pil"``, ``"tensor"`` or ``"gpu"``, as in :class:`ImageFolderDataModule`.
        cache_dir: where remote shards are cached (litdata's default when None).
        max_cache_size: the most the cache holds, e.g. ``"50GB"``.
        **kwargs: the :class:`MAEDataModule` arguments.
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str | None = "val",
        decode: str = "pil",
        cache_dir: str | None = None,
        max_cache_size: str = "50GB",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # checks in_chans against the image files the shards hold
        self.set_decode(decode)
        self.root = str(root).rstrip("/")
        self.loader = self.pipeline.loader(self)
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        # Opened here, so that a missing or unreachable location stops the run before it starts.
        self._shards = {"train": open_shards(f"{self.root}/{train_dir}", cache_dir, max_cache_size)}
        val = f"{self.root}/{val_dir}" if val_dir else None
        if val is not None and (val.startswith(REMOTE_PREFIXES) or os.path.isdir(val)):
            self._shards["val"] = open_shards(val, cache_dir, max_cache_size)

    def build_dataset(self, split: str, transform: Callable | None) -> Dataset | None:
        shards = self._shards.get("train" if split == "train" else "val")
        return None if shards is None else ShardImages(shards, self.loader, transform)
