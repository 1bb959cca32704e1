"""Optimiser pieces of the official recipes: weight-decay groups, lr scaling, warmup + cosine, layer-wise lr
decay (fine-tuning) and LARS (linear probing)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

# Name parts that wrappers insert: FSDP units, activation checkpointing, torch.compile of a submodule.
_WRAPPER_NAME_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    """The name in the plain model: ``blocks.0._fsdp_wrapped_module.norm1.weight`` -> ``blocks.0.norm1.weight``."""
    for part in _WRAPPER_NAME_PARTS:
        name = name.replace(part, "")
    return name


def parameter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Name -> shape of every parameter, read before a strategy wraps or shards the model.

    Under FSDP every parameter the optimizer sees is a 1-D shard (or empty on some ranks), so any
    decision made from ``param.ndim`` there (weight decay, layer decay) must use these shapes.
    """
    return {unwrapped_name(name): param.shape for name, param in model.named_parameters()}


def _named_dims(model: nn.Module, shapes: Mapping[str, torch.Size] | None) -> Iterator[tuple[str, int, nn.Parameter]]:
    """(unwrapped name, number of dimensions of the whole tensor, parameter) for every trainable parameter."""
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = unwrapped_name(name)
        if shapes is None:
            yield name, param.ndim, param
        elif name not in shapes:
            raise KeyError(f"parameter {name!r} has no recorded shape: record the shapes after the model is built")
        else:
            yield name, len(shapes[name]), param


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, shapes: Mapping[str, torch.Size] | None = None
) -> list[dict]:
    """Two AdamW groups: decay on weight matrices, none on biases and norm weights (1-D tensors).

    This is timm's ``add_weight_decay`` that the official pretraining script uses: frozen
    tensors (the sin-cos tables) are left out, and the cls and mask tokens are decayed.

    Args:
        model: the model, plain or wrapped by a strategy.
        weight_decay: decay of the weight matrices.
        shapes: :func:`parameter_shapes` of the model before it was wrapped (None: the parameters' own
            shapes, right for an unsharded model).
    """
    decay, no_decay = [], []
    for name, ndim, param in _named_dims(model, shapes):
        (no_decay if ndim <= 1 or name.endswith(".bias") else decay).append(param)
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


def warmup_poly_lr(
    epoch: float, peak_lr: float, min_lr: float, warmup_epochs: float, epochs: float, power: float = 1.0
) -> float:
    """Linear warmup from 0, then polynomial decay ``(1 - progress) ** power`` down to ``min_lr``.

    mmsegmentation's ``PolyLR`` after its ``LinearLR`` warmup (power 1.0 in the MAE / BEiT segmentation recipes).
    """
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    progress = min((epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12), 1.0)
    return min_lr + (peak_lr - min_lr) * (1.0 - progress) ** power


# The decays after the warmup that a recipe can name.
LR_DECAYS = {"cosine": warmup_cosine_lr, "poly": warmup_poly_lr}


@dataclass(frozen=True)
class RunLength:
    """How long a run trains: in (fractional) epochs and in optimizer steps."""

    epochs: float
    steps: int


def run_length(
    num_batches: int, accumulate_grad_batches: int, max_epochs: int | None, max_steps: int = -1
) -> RunLength:
    """The length every schedule of a run is drawn over: the first of ``max_epochs`` and ``max_steps`` to end it.

    Lightning stops at whichever limit comes first, so a schedule stretched over ``max_epochs`` would never
    finish in a run cut short by ``max_steps`` (and the reverse). ``max_steps`` counts optimizer steps: with
    gradient accumulation an epoch of ``num_batches`` batches makes ``ceil(num_batches / accumulate)`` of them.
    The arguments are the trainer's (``num_batches`` after ``limit_train_batches``); a limit of -1 or None is none.
    """
    steps_per_epoch = max(math.ceil(num_batches / accumulate_grad_batches), 1)
    by_epochs = max_epochs if max_epochs is not None and max_epochs >= 0 else math.inf
    by_steps = max_steps / steps_per_epoch if max_steps is not None and max_steps >= 0 else math.inf
    epochs = min(by_epochs, by_steps)
    if math.isinf(epochs):
        raise ValueError("the learning-rate schedule needs a run length: set trainer.max_epochs or trainer.max_steps")
    return RunLength(epochs=float(epochs), steps=math.ceil(epochs * steps_per_epoch))


def trainer_run_length(trainer) -> RunLength:
    """:func:`run_length` of a Lightning ``Trainer`` that is fitting."""
    return run_length(
        trainer.num_training_batches, trainer.accumulate_grad_batches, trainer.max_epochs, trainer.max_steps
    )


def check_warmup(warmup_epochs: float, length: RunLength) -> None:
    """Warn (rank zero) when the warmup is as long as the run: the lr would never reach its peak nor decay."""
    if warmup_epochs >= length.epochs:
        rank_zero_warn(
            f"warmup_epochs={warmup_epochs} is not shorter than the run ({length.epochs:.3g} epochs = "
            f"{length.steps} optimizer steps): the learning rate never reaches its peak and never decays"
        )


def set_scheduled_lr(
    trainer, batch_idx: int, peak_lr: float, min_lr: float, warmup_epochs: float, decay: str = "cosine"
) -> None:
    """Set the warmup + ``decay`` (:data:`LR_DECAYS`) lr of this point of the run, once per optimizer step (as the
    official loop).

    Called before every training batch: it acts at the first micro-batch of each accumulated step, at the
    fractional epoch ``current_epoch + batch_idx / batches per epoch``, over :func:`trainer_run_length`.
    """
    if batch_idx % trainer.accumulate_grad_batches:
        return
    epoch = trainer.current_epoch + batch_idx / max(trainer.num_training_batches, 1)
    lr = LR_DECAYS[decay](epoch, peak_lr, min_lr, warmup_epochs, trainer_run_length(trainer).epochs)
    set_lr(trainer.optimizers[0], lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group ``lr`` times its ``lr_scale`` (1 when it has none; layer decay sets it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
    shapes: Mapping[str, torch.Size] | None = None,
) -> list[dict]:
    """Parameter groups with layer-wise lr decay, as the official ``util/lr_decay.param_groups_lrd``.

    With ``L`` blocks, a parameter at layer id ``i`` (see :func:`layer_id_for_vit`) gets
    ``lr_scale = layer_decay ** (L + 1 - i)``: the head and final norm train at the full lr, block
    ``L-1`` at ``layer_decay`` times it, and the embedding at ``layer_decay ** (L + 1)`` (see :func:`set_lr`).
    No weight decay on 1-D tensors (biases, norms) and on ``no_weight_decay``. Frozen parameters are left out.

    Args:
        model: a ViT with ``blocks`` and timm parameter names.
        weight_decay: decay of the weight matrices.
        layer_decay: ratio of the lr of a layer to that of the layer above it (1.0 disables the decay).
        no_weight_decay: parameter names without weight decay besides the 1-D ones (``pos_embed``, ``cls_token``).
        shapes: as in :func:`param_groups_weight_decay`.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_layers = len(model.blocks) + 1
    groups: dict[str, dict] = {}
    for name, ndim, param in _named_dims(model, shapes):
        no_decay = ndim == 1 or name in no_weight_decay
        layer_id = layer_id_for_vit(name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        scale = layer_decay ** (num_layers - layer_id)
        group = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale, "name": key}
        groups.setdefault(key, group)["params"].append(param)
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
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    # torch.where keeps this on the device: no host sync per parameter.
                    trusted = (param_norm > 0.0) & (update_norm > 0)
                    grad = grad.mul(torch.where(trusted, ratio, torch.ones_like(ratio)))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(grad)
                p.add_(mu, alpha=-group["lr"])
        return loss
