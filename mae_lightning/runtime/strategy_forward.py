"""Run a LightningModule method from a callback the way the Trainer runs a step: through the strategy's wrapper."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer


def forward_through_strategy(trainer: Trainer, pl_module: LightningModule, method: str, *args: Any) -> Any:
    """``pl_module.<method>(*args)``, entered through the forward of the strategy's wrapper (DDP, FSDP).

    Under FSDP the weights live in shards outside a forward: calling the inner module directly from a
    callback would fail on rank 0 or leave the other ranks waiting. Entered through the wrapper, the
    shards are gathered exactly as in a training step, so every process must call this the same number
    of times (also under DDP, whose forward may synchronise buffers). With no wrapper it is a plain call.
    """
    wrapper = trainer.strategy.model
    if wrapper is None or wrapper is pl_module:
        return getattr(pl_module, method)(*args)
    if method == "forward":
        return wrapper(*args)
    # Lightning's own mechanism for training_step & co. (it patches `forward` for the length of one call).
    return trainer.strategy._forward_redirection(wrapper, pl_module, method, *args)
