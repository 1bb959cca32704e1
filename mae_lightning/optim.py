"""Optimiser pieces of the official recipes: weight-decay groups, lr scaling, warmup + cosine, layer-wise lr
decay (fine-tuning) and LARS (linear probing)."""

from __future__ import annotations

import math

import torch
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


def check_schedule(base_lr: float, lr: float | None, min_lr: float, warmup_epochs: float, weight_decay: float) -> None:
    """Raise a ValueError naming the setting unless the learning-rate settings can make a schedule."""
    for name, value in (("base_lr", base_lr), ("lr", lr)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if min_lr < 0 or warmup_epochs < 0 or weight_decay < 0:
        raise ValueError(
            f"min_lr, warmup_epochs and weight_decay must be >= 0, got {min_lr}, {warmup_epochs}, {weight_decay}"
        )


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


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Depth of a ViT parameter for layer-wise lr decay (the official ``util/lr_decay.get_layer_id_for_vit``).

    0 for the embedding (``cls_token``, ``pos_embed``, ``patch_embed.*``), ``i + 1`` for ``blocks.i.*``,
    and ``num_layers`` (= number of blocks + 1) for everything after the blocks (norms, head).
    """
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """Parameter groups with layer-wise lr decay, as the official ``util/lr_decay.param_groups_lrd``.

    With ``L`` blocks, a parameter at layer id ``i`` (see :func:`layer_id_for_vit`) gets
    ``lr_scale = layer_decay ** (L + 1 - i)``: the head and final norm train at the full lr, block
    ``L-1`` at ``layer_decay`` times it, and the embedding at ``layer_decay ** (L + 1)``. No weight
    decay on 1-D tensors (biases, norms) and on the names in ``no_weight_decay``. Each group carries
    its ``lr_scale``; the scheduler multiplies the scheduled lr by it. Frozen parameters are left out.

    Args:
        model: a ViT with ``blocks`` and timm parameter names.
        weight_decay: decay of the weight matrices.
        layer_decay: ratio of the lr of a layer to that of the layer above it (1.0 disables the decay).
        no_weight_decay: parameter names without weight decay besides the 1-D ones (``pos_embed``, ``cls_token``).
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_layers = len(model.blocks) + 1
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in no_weight_decay
        layer_id = layer_id_for_vit(name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer_id),
                "name": key,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


class LARS(torch.optim.Optimizer):
    """LARS with momentum, as the official ``util/lars.py`` (used for linear probing).

    For parameters of two or more dimensions the gradient gets weight decay added and is then
    scaled by the trust ratio ``trust_coefficient * ||w|| / ||g||`` (1 when either norm is 0);
    1-D parameters (biases, norms) get neither. Then ``mu = momentum * mu + g`` and ``w -= lr * mu``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        weight_decay: L2 penalty added to the gradient of >= 2-D parameters.
        momentum: momentum factor.
        trust_coefficient: the LARS coefficient eta.
    """

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and trust_coefficient > 0, got "
                f"lr={lr}, weight_decay={weight_decay}, momentum={momentum}, trust_coefficient={trust_coefficient}"
            )
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(grad)
                    one = torch.ones_like(param_norm)
                    # torch.where keeps this on the device: no host sync per parameter.
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one),
                        one,
                    )
                    grad = grad.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(grad)
                p.add_(mu, alpha=-group["lr"])
        return loss
