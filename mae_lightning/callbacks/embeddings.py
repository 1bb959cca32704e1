"""Write what ``predict`` computes (embeddings, logits, targets, file paths) to one file that numpy and torch read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class EmbeddingWriter(BasePredictionWriter):
    """Save ``predict_step``'s dictionaries as one ``.npz`` (``numpy.load``) or ``.pt`` (``torch.load``) file.

    Every tensor of the dictionaries becomes an array with one row per image, in dataset order
    (``cls`` / ``mean`` embeddings of a pretraining checkpoint, ``embedding`` / ``logits`` of a
    classifier, ``target``), plus ``index`` (the dataset index) and, for image files, ``path``.
    Under DDP each process writes its part with its rank in the name (``embeddings.rank1.npz``).

    Args:
        path: output file; the suffix (``.npz`` or ``.pt``) picks the format.
    """

    def __init__(self, path: str = "embeddings.npz") -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        if self.path.suffix not in (".npz", ".pt"):
            raise ValueError(f"path must end in .npz or .pt, got {path!r}")

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        # One dataloader: a flat list of batches; several: a list per dataloader (only the first is written).
        if predictions and isinstance(predictions[0], list):
            predictions = predictions[0]
        # Lightning nests the indices per dataloader even when the predictions are flat.
        if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
            batch_indices = batch_indices[0]
        columns: dict[str, torch.Tensor] = {}
        if predictions:
            columns = {key: torch.cat([p[key].detach().float().cpu() for p in predictions]) for key in predictions[0]}
            if batch_indices and all(batch_indices):
                columns["index"] = torch.tensor([i for batch in batch_indices for i in batch], dtype=torch.long)
            else:
                columns["index"] = torch.arange(len(next(iter(columns.values()))), dtype=torch.long)
        if trainer.world_size > 1:  # every process takes part, also one that had no batch
            columns = _gather_rows(columns)
        if not trainer.is_global_zero or not columns:
            return
        if "target" in columns:
            columns["target"] = columns["target"].long()
        dataset = getattr(trainer.predict_dataloaders, "dataset", None)
        samples = getattr(dataset, "samples", None)
        if samples is not None and len(samples) > int(columns["index"].max()):
            picked = (samples[i] for i in columns["index"].tolist())
            columns["path"] = [str(s[0] if isinstance(s, tuple) else s) for s in picked]  # type: ignore[assignment]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".npz":
            np.savez(self.path, **{key: np.asarray(value) for key, value in columns.items()})
        else:
            torch.save(columns, self.path)


def _gather_rows(columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's rows, concatenated and sorted by dataset index (a sample seen twice is kept once).

    Lightning's predict sampler gives the processes disjoint shares of possibly unequal sizes, so
    the rows travel as Python objects (``all_gather_object``) rather than as equal-sized tensors.
    """
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, columns)
    parts = [part for part in parts if part]
    if not parts:
        return {}
    merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    order = merged["index"].argsort(stable=True)
    merged = {key: value[order] for key, value in merged.items()}
    first = torch.ones_like(merged["index"], dtype=torch.bool)
    first[1:] = merged["index"][1:] != merged["index"][:-1]
    return {key: value[first] for key, value in merged.items()}
