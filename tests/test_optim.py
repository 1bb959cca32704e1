"""Weight-decay groups (also of sharded parameters), the linear lr scaling rule, the run length and the schedule."""

import math

import pytest
import torch
from torch import nn

from mae_lightning.optim import (
    param_groups_weight_decay,
    parameter_shapes,
    run_length,
    scaled_lr,
    unwrapped_name,
    warmup_cosine_lr,
)
from tests.helpers import tiny_mae


def test_no_decay_on_biases_and_norms_decay_on_matrices_and_tokens():
    model = tiny_mae(img_size=8, in_chans=3, embed_dim=8, decoder_embed_dim=8)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay_names == {
        "cls_token", "mask_token", "patch_embed.proj.weight", "decoder_embed.weight", "decoder_pred.weight",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight",
        "decoder_blocks.0.attn.qkv.weight", "decoder_blocks.0.attn.proj.weight",
        "decoder_blocks.0.mlp.fc1.weight", "decoder_blocks.0.mlp.fc2.weight",
    }  # fmt: skip
    assert all(n.endswith(".bias") or "norm" in n for n in no_decay_names)
    assert "norm.weight" in no_decay_names and "blocks.0.norm1.weight" in no_decay_names
    # the fixed sin-cos tables are not optimised at all
    assert "pos_embed" not in no_decay_names | decay_names
    assert "decoder_pos_embed" not in no_decay_names | decay_names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay_names | decay_names == trainable


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)


def test_warmup_then_cosine_to_min_lr():
    args = dict(peak_lr=1.0, min_lr=0.1, warmup_epochs=10, epochs=110)
    assert warmup_cosine_lr(0, **args) == 0.0
    assert warmup_cosine_lr(2.5, **args) == pytest.approx(0.25)
    assert warmup_cosine_lr(10, **args) == pytest.approx(1.0)
    assert warmup_cosine_lr(60, **args) == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert warmup_cosine_lr(35, **args) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine_lr(110, **args) == pytest.approx(0.1)
    assert warmup_cosine_lr(200, **args) == pytest.approx(0.1)  # past the end it stays at min_lr
    lrs = [warmup_cosine_lr(e / 10, **args) for e in range(1101)]
    assert lrs.index(max(lrs)) == 100
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101], strict=True))
    assert all(a >= b for a, b in zip(lrs[100:-1], lrs[101:], strict=True))


def test_no_warmup():
    assert warmup_cosine_lr(0, peak_lr=2.0, min_lr=0.0, warmup_epochs=0, epochs=10) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("num_batches", "accumulate", "max_epochs", "max_steps", "epochs", "steps"),
    [
        (10, 1, 30, -1, 30.0, 300),  # epochs only
        (10, 1, None, 25, 2.5, 25),  # steps only
        (10, 1, 30, 25, 2.5, 25),  # max_steps ends the run first
        (10, 1, 2, 100, 2.0, 20),  # max_epochs ends it first
        (10, 4, 30, 9, 3.0, 9),  # accumulation: ceil(10 / 4) = 3 optimizer steps per epoch
    ],
)
def test_run_length_is_the_first_limit_to_end_the_run(num_batches, accumulate, max_epochs, max_steps, epochs, steps):
    length = run_length(num_batches, accumulate, max_epochs, max_steps)
    assert (length.epochs, length.steps) == (epochs, steps)


def test_run_length_needs_a_limit():
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        run_length(10, 1, -1, -1)


def test_groups_are_decided_from_recorded_shapes_when_the_parameters_are_shards():
    """Under FSDP the optimizer sees 1-D shards named through wrappers; the recorded shapes keep the recipe."""

    class Wrapped(nn.Module):  # the names FSDP and activation checkpointing give a block's parameters
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self._fsdp_wrapped_module = nn.Module()
            self._fsdp_wrapped_module._checkpoint_wrapped_module = linear

    plain = nn.Module()
    plain.blocks = nn.ModuleList([nn.Linear(4, 3)])
    shapes = parameter_shapes(plain)
    sharded = nn.Module()
    sharded.blocks = nn.ModuleList([Wrapped(nn.Linear(4, 3))])
    with torch.no_grad():  # flatten every parameter, as FSDP's views of a shard
        for module in sharded.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(param.reshape(-1)))
    assert unwrapped_name("blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.weight") == "blocks.0.weight"
    assert shapes == {"blocks.0.weight": (3, 4), "blocks.0.bias": (3,)}
    by_ndim = param_groups_weight_decay(sharded, 0.05)
    assert [sum(p.numel() for p in g["params"]) for g in by_ndim] == [15, 0]  # what FSDP did to the recipe
    recorded = param_groups_weight_decay(sharded, 0.05, shapes)
    assert [sum(p.numel() for p in g["params"]) for g in recorded] == [3, 12]
    with pytest.raises(KeyError, match="no recorded shape"):
        param_groups_weight_decay(sharded, 0.05, {})
