"""Random state per process: seeded from (seed, rank), saved for every rank, restored on its own rank.

The masks, drop path and MixUp/CutMix draw from the global generators, which ``seed_everything`` seeds alike
on every process.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn


def seed_rank(rank: int) -> None:
    """Seed the global ``torch``, ``numpy`` and ``random`` generators of process ``rank > 0`` with ``seed + rank``.

    ``seed`` is the run's (``seed_everything``), as the official code's ``seed + misc.get_rank()``. Rank 0
    keeps the state it has, so a single-process run draws exactly what it drew before multi-process
    support existed.
    """
    if rank == 0:
        return
    seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) + rank
    torch.manual_seed(seed)  # CPU and every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


class RNGStateCheckpoint(Callback):
    """Per-rank random streams from the first step, and in checkpoints the state of every rank.

    When fitting starts each process folds its rank into its generators (:func:`seed_rank`), so the
    ranks draw different masks, each reproducible from (seed, rank). Lightning stores no random state,
    and a checkpoint is written by rank 0 alone: here every rank's global ``torch`` (CPU and CUDA),
    ``numpy`` and ``random`` state is gathered into it and each rank gets its own back, so a resumed
    run continues the very masks of the interrupted one on every rank (the data pipeline draws from its
    own seeds, see ``data/resumable.py``). Resuming on another number of processes warns and continues
    from rank 0's state with the rank folded in.
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed_rank(trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank when a checkpoint is saved (the states must be gathered before rank 0 writes):
        # a collective, like the saving itself under FSDP; Lightning saves on every rank at the same point
        # (ModelCheckpoint, SIGTERM, SLURM's requeue signal, which reaches every task).
        states = _to_checkpoint(_collect_rng_states(include_cuda=True))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, states)
        else:
            per_rank = [states]
        return {"rng_states_per_rank": per_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng_states_per_rank" in state_dict:
            self._to_restore = state_dict["rng_states_per_rank"]
        elif "rng_states" in state_dict:  # checkpoints written before the states were kept per rank
            self._to_restore = [state_dict["rng_states"]]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The last moment before the first step: after every strategy has restored its checkpoint
        # and after the sanity check (whose masks come from their own fixed generator).
        per_rank, self._to_restore = self._to_restore, None
        if per_rank is None:
            return
        rank = trainer.global_rank
        if len(per_rank) == trainer.world_size:
            _set_rng_states(_from_checkpoint(per_rank[rank]))
            return
        rank_zero_warn(
            f"The checkpoint holds the random state of {len(per_rank)} process(es) and this run has "
            f"{trainer.world_size}: the masks continue from rank 0's state with each rank folded in, "
            "not as the interrupted run would have drawn them."
        )
        _set_rng_states(_from_checkpoint(per_rank[0]))
        if rank > 0:
            torch.manual_seed(int(torch.randint(2**62, ())) + rank)


def _to_checkpoint(states: dict[str, Any]) -> dict[str, Any]:
    # As tensors and plain tuples, so the checkpoint loads with `weights_only=True` (Lightning's default).
    kind, keys, pos, has_gauss, cached = states["numpy"]
    return {**states, "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}


def _from_checkpoint(states: dict[str, Any]) -> dict[str, Any]:
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "torch.cuda" in states and len(states["torch.cuda"]) != devices:
        states = {key: value for key, value in states.items() if key != "torch.cuda"}
    kind, keys, pos, has_gauss, cached = states["numpy"]
    return {**states, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}
