"""Segmentation heads: shapes on square, non-square and odd grids, the auxiliary path, gradients, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mae_lightning.models.segmentation_heads import FeaturePyramid, LinearHead, UperNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors gain nothing from threads

D, K = 16, 3
GRIDS = [(4, 6), (5, 7), (8, 8)]


def upernet(**overrides) -> UperNet:
    torch.manual_seed(0)
    return UperNet(**{"embed_dim": D, "num_classes": K, "channels": 8, "auxiliary_channels": 8, **overrides})


def features(count: int, h: int, w: int, n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(n, D, h, w) for _ in range(count)]


@pytest.mark.parametrize("grid", [*GRIDS, (1, 1)])
def test_linear_head_keeps_the_patch_grid(grid):
    head = LinearHead(embed_dim=D, num_classes=K)
    assert head(features(1, *grid)).shape == (2, K, *grid)
    assert head.auxiliary(features(1, *grid)) is None


@pytest.mark.parametrize("grid", GRIDS)
def test_upernet_logits_at_4x_the_grid_and_auxiliary_at_the_grid(grid):
    h, w = grid
    head = upernet()
    feats = features(4, h, w)
    assert head(feats).shape == (2, K, 4 * h, 4 * w)
    assert head.auxiliary(feats).shape == (2, K, h, w)


@pytest.mark.parametrize("grid", GRIDS)
def test_feature_pyramid_strides(grid):
    h, w = grid
    levels = FeaturePyramid(D)(features(4, h, w))
    assert [tuple(x.shape[2:]) for x in levels] == [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (h // 2, w // 2)]
    assert all(x.shape[:2] == (2, D) for x in levels)


def test_feature_pyramid_needs_a_2x2_grid_for_its_half_level():
    with pytest.raises(ValueError, match="at least 2x2, got 1x5"):
        upernet()(features(4, 1, 5))


def test_num_features_and_wrong_counts():
    assert LinearHead.num_features == 1 and UperNet.num_features == 4
    with pytest.raises(ValueError, match="UperNet expects 4 features, got 3"):
        upernet()(features(3, 4, 4))
    with pytest.raises(ValueError, match="LinearHead expects 1 features, got 2"):
        LinearHead(D, K)(features(2, 4, 4))
    with pytest.raises(ValueError, match=r"expects features of shape \(N, 16, h, w\), got \(2, 8, 4, 4\)"):
        upernet()([torch.randn(2, 8, 4, 4)] * 4)


@pytest.mark.parametrize("make", [upernet, lambda: LinearHead(D, K)], ids=["upernet", "linear"])
def test_forward_with_auxiliary_equals_separate_calls(make):
    head = make().eval()
    feats = features(head.num_features, 5, 7)
    logits, aux = head.forward_with_auxiliary(feats)
    assert torch.equal(logits, head(feats))
    expected = head.auxiliary(feats)
    assert (aux is None and expected is None) or torch.equal(aux, expected)


def test_without_auxiliary_head():
    head = upernet(auxiliary_channels=0).eval()
    assert head.auxiliary_head is None and head.auxiliary(features(4, 4, 4)) is None
    logits, aux = head.forward_with_auxiliary(features(4, 4, 4))
    assert aux is None and logits.shape == (2, K, 16, 16)


def test_gradients_reach_every_upernet_parameter():
    head = upernet().train()
    logits, aux = head.forward_with_auxiliary(features(4, 4, 6))
    (logits.sum() + aux.sum()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_batch_size_one_in_training():
    # PyTorch refuses to normalise one value per channel in training: the PPM's 1x1 branch with N = 1.
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm2d(4).train()(torch.randn(1, 4, 1, 1))
    head = upernet().train()
    with pytest.raises(ValueError, match=r"batch size 1 .* N >= 2 per process"):
        head(features(4, 4, 4, n=1))
    assert head(features(4, 4, 4, n=2)).shape == (2, K, 16, 16)
    assert head.eval()(features(4, 4, 4, n=1)).shape == (1, K, 16, 16)
    # Without pool scale 1 and with no 1x1 level, one image per batch trains.
    assert upernet(pool_scales=(2, 3)).train()(features(4, 4, 4, n=1)).shape == (1, K, 16, 16)
    with pytest.raises(ValueError, match="batch size 1"):
        LinearHead(D, K).train()(features(1, 1, 1, n=1))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LinearHead(embed_dim=0, num_classes=K), "embed_dim must be >= 1"),
        (lambda: LinearHead(embed_dim=D, num_classes=0), "num_classes must be >= 1"),
        (lambda: upernet(embed_dim=0), "embed_dim must be >= 1"),
        (lambda: upernet(num_classes=0), "num_classes must be >= 1"),
        (lambda: upernet(channels=0), "channels must be >= 1"),
        (lambda: upernet(rescales=(4, 2, 1)), "rescales must be 4 values"),
        (lambda: upernet(rescales=(4, 2, 1, 3)), "rescales must be 4 values"),
        (lambda: upernet(dropout=1.0), "dropout must be in"),
        (lambda: upernet(dropout=-0.1), "dropout must be in"),
        (lambda: upernet(pool_scales=()), "pool_scales must be"),
        (lambda: upernet(auxiliary_channels=-1), "auxiliary_channels must be >= 0"),
    ],
)
def test_constructor_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_parameter_names_and_init():
    keys = upernet().state_dict()
    for key in ("neck.fpn1.0.weight", "decode_head.conv_seg.weight", "auxiliary_head.conv_seg.weight"):
        assert key in keys, key
    linear = LinearHead(D, K).state_dict()
    assert "conv_seg.weight" in linear and "bn.running_mean" in linear
    big = LinearHead(256, 64).conv_seg
    assert torch.equal(big.bias, torch.zeros(64)) and 0.008 < big.weight.std().item() < 0.012
