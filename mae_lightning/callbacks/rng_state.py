"""Keep the global random state in checkpoints, so a resumed run draws the masks it would have drawn."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback, LightningModule, Trainer


class RNGStateCheckpoint(Callback):
    """Save the global ``torch`` (CPU and CUDA), ``numpy`` and ``random`` states with every checkpoint.

    Lightning does not store them. The masks are drawn from the global ``torch`` state, and the data
    pipeline draws from its own seeds (see ``data/resumable.py``), so after restoring these states a
    resumed run continues the very sequence of masks of the interrupted one. The states are those of
    the process that writes the checkpoint (rank 0); in a multi-process run the other ranks are
    restored from rank 0's state with the rank folded in, so their masks differ from each other but
    are not those of the interrupted run.
    """

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=True)
        # As tensors and plain tuples, so the checkpoint loads with `weights_only=True` (Lightning's default).
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
        return {"rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("rng_states")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The last moment before the first step: after every strategy has restored its checkpoint
        # and after the sanity check (whose masks come from their own fixed generator).
        states = getattr(self, "_to_restore", None)
        if states is None:
            return
        self._to_restore = None
        if "torch.cuda" in states and len(states["torch.cuda"]) != _cuda_device_count():
            states = {key: value for key, value in states.items() if key != "torch.cuda"}
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states = {**states, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}
        _set_rng_states(states)
        if trainer.global_rank != 0:
            torch.manual_seed(int(torch.randint(2**62, ())) + trainer.global_rank)


def _cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
