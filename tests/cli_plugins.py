"""Callbacks and a strategy that multi-process tests add to real CLI runs; not collected by pytest.

A run started with ``python -m mae_lightning`` imports them by class path, so its environment has
``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel


class PerRankLosses(Callback):
    """Append ``<global step> <loss as float.hex()>`` to ``<dirpath>/rank<r>.txt`` after every training step.

    The hexadecimal text is exact, so two files are equal exactly when the losses are equal bit for bit.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {float(outputs['loss']).hex()}\n")


class PerRankImageLevels(Callback):
    """Append the grey level of every training image to ``<dirpath>/rank<r>.txt`` (flat grey images only).

    ``mean`` and ``std`` are the DataModule's normalisation, undone here.
    """

    def __init__(self, dirpath: str, mean: list[float], std: list[float]) -> None:
        self.dirpath = Path(dirpath)
        self.mean, self.std = mean[0], std[0]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        levels = ((batch[0].mean(dim=(1, 2, 3)) * self.std + self.mean) * 255).round().long()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(" ".join(str(level) for level in levels.tolist()) + "\n")


class StopAtStep(Callback):
    """End training after optimizer step ``step``, as an interruption would (the schedule is left as configured)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, let onto the CPU (gloo) so that tests run real FSDP; Lightning refuses only
    the exact class there, and torch's FSDP runs on CPU."""

    def __init__(self, process_group_backend: str = "gloo", **kwargs) -> None:
        # Stated, not merged into kwargs: the config parser follows **kwargs into FSDPStrategy's arguments.
        super().__init__(process_group_backend=process_group_backend, **kwargs)

    def _setup_model(self, model):
        # Lightning passes device_id=None on the CPU, which torch's FSDP refuses; wrap here with the CPU device.
        # Lightning then adds activation checkpointing to the wrapped model as usual.
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # applied above
        return super()._setup_model(wrapped)


class OptimizerGroupSizes(Callback):
    """Write ``<dirpath>/groups_rank<r>.json`` when training starts: per optimizer group, its weight decay, its
    lr scale and the number of parameter elements this process holds (a shard's under FSDP)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        groups = [
            {
                "weight_decay": group["weight_decay"],
                "lr_scale": group.get("lr_scale", 1.0),
                "numel": sum(p.numel() for p in group["params"]),
            }
            for group in trainer.optimizers[0].param_groups
        ]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"groups_rank{trainer.global_rank}.json").write_text(json.dumps(groups))


class InjectNaN(Callback):
    """Fill the training batch of optimizer step ``step`` with NaN (on every process): its loss, gradients and the
    weights after its update are NaN, as after a real divergence."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class VisiblePatches(Callback):
    """Append ``<global step> <visible patches per image>`` of every training step to ``<dirpath>/rank<r>.txt``
    (read from the encoded tokens a pretraining step returns: the masks that step drew)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {outputs['latent'].shape[1] - 1}\n")
