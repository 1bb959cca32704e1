"""Layer-wise lr decay groups (fine-tuning) and LARS (linear probing), against hand computations."""

import pytest
import torch

from mae_lightning.optim import LARS, layer_id_for_vit, param_groups_layer_decay
from tests.helpers import tiny_vit


def test_layer_ids_follow_the_official_rule():
    assert layer_id_for_vit("cls_token", 4) == 0
    assert layer_id_for_vit("pos_embed", 4) == 0
    assert layer_id_for_vit("patch_embed.proj.weight", 4) == 0
    assert layer_id_for_vit("blocks.0.attn.qkv.weight", 4) == 1
    assert layer_id_for_vit("blocks.2.mlp.fc2.bias", 4) == 3
    assert layer_id_for_vit("fc_norm.weight", 4) == 4
    assert layer_id_for_vit("head.weight", 4) == 4


def test_layer_decay_groups_scales_and_weight_decay():
    model = tiny_vit(img_size=8, num_classes=5, embed_dim=8, depth=3)
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.5, no_weight_decay=model.no_weight_decay()
    )
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["name"]: g for g in groups}
    members = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    # num_layers = depth + 1 = 4; scale = 0.5 ** (4 - layer_id)
    assert members["layer_0_no_decay"] == {"cls_token", "pos_embed", "patch_embed.proj.bias"}
    assert members["layer_0_decay"] == {"patch_embed.proj.weight"}
    assert members["layer_2_decay"] == {
        "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.weight", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"
    }  # fmt: skip
    assert members["layer_4_decay"] == {"head.weight"}
    assert members["layer_4_no_decay"] == {"fc_norm.weight", "fc_norm.bias", "head.bias"}
    expected_scale = {0: 0.5**4, 1: 0.5**3, 2: 0.5**2, 3: 0.5, 4: 1.0}
    for name, group in by_name.items():
        layer = int(name.split("_")[1])
        assert group["lr_scale"] == pytest.approx(expected_scale[layer])
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else 0.05)
    # every trainable parameter in exactly one group
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_layer_decay_leaves_frozen_parameters_out_and_rejects_bad_decay():
    model = tiny_vit(img_size=8, num_classes=5, embed_dim=8, depth=2)
    model.blocks[0].requires_grad_(False)
    groups = param_groups_layer_decay(model, layer_decay=0.75)
    assert not any(name.startswith("layer_1_") for name in (g["name"] for g in groups))
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_layer_decay(model, layer_decay=0.0)


def test_lars_step_equals_hand_computation():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([weight, bias], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    weight.grad = torch.tensor([[0.7, -2.4]])
    bias.grad = torch.tensor([2.0])
    opt.step()
    # matrix: g + wd * w = [1.0, -2.0], norm sqrt(5); trust = 0.001 * 5 / sqrt(5) = 0.001 * sqrt(5)
    update = torch.tensor([[1.0, -2.0]]) * 0.001 * 5**0.5
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 4.0]]) - 0.5 * update)
    # 1-D: no weight decay, no trust ratio
    torch.testing.assert_close(bias.data, torch.tensor([1.0 - 0.5 * 2.0]))
    # second step: momentum accumulates mu = 0.9 * mu + g
    w1, b1 = weight.data.clone(), bias.data.clone()
    weight.grad = torch.tensor([[0.0, 0.0]])
    bias.grad = torch.tensor([1.0])
    opt.step()
    g2 = 0.1 * w1
    update2 = 0.9 * update + g2 * 0.001 * w1.norm() / g2.norm()
    torch.testing.assert_close(weight.data, w1 - 0.5 * update2)
    torch.testing.assert_close(bias.data, b1 - 0.5 * (0.9 * 2.0 + 1.0))


def test_lars_trust_ratio_is_one_for_zero_norms():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([weight], lr=1.0, momentum=0.0)
    weight.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(weight.data, -torch.ones(2, 2))
