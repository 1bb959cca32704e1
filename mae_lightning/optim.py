"""Optimiser pieces of the official recipe: weight-decay groups, lr scaling, warmup + cosine."""

from __future__ import annotations

import math

from torch import nn


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on weight matrices, none on biases and norm weights (1-D tensors).

    This is timm's ``add_weight_decay`` that the official pretraining script uses: frozen
    tensors (the sin-cos tables) are left out, and the cls and mask tokens are decayed.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def scaled_lr(base_lr: float, effective_batch_size: int) -> float:
    """The linear scaling rule of the paper: ``lr = base_lr * effective_batch_size / 256``."""
    return base_lr * effective_batch_size / 256


def warmup_cosine_lr(epoch: float, peak_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at a fractional epoch: linear warmup from 0, then half-cosine down to ``min_lr``.

    The official ``util/lr_sched.adjust_learning_rate``, evaluated every step.
    """
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
