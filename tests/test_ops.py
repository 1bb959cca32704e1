"""Exact tests of the shape primitives against the official MAE formulas."""

import pytest
import torch

from mae_lightning.models.pos_embed import sincos_2d
from mae_lightning.ops import grid_size, patchify, pool_tokens, unpatchify
from tests.reference import official_2d_sincos


# ---------------------------------------------------------------------------- patches
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("height,width", [(8, 8), (8, 12), (12, 4)])
def test_patchify_round_trip(channels, height, width):
    imgs = torch.randn(2, channels, height, width)
    patches = patchify(imgs, 4)
    assert patches.shape == (2, (height // 4) * (width // 4), 4 * 4 * channels)
    assert torch.equal(unpatchify(patches, 4, (height // 4, width // 4), channels), imgs)


def test_patch_vector_layout_is_row_col_channel():
    """Patch (i, j), element (p, q, c) is pixel (c, i*P + p, j*P + q): the official (p, q, c) order."""
    P, C = 2, 3
    imgs = torch.randn(1, C, 4, 6)
    patches = patchify(imgs, P)
    gw = 6 // P
    for i in range(2):
        for j in range(3):
            vec = patches[0, i * gw + j].reshape(P, P, C)
            for p in range(P):
                for q in range(P):
                    for c in range(C):
                        assert vec[p, q, c] == imgs[0, c, i * P + p, j * P + q]


def test_patchify_matches_official_code_for_rgb():
    imgs = torch.randn(2, 3, 32, 32)
    p, h = 4, 8
    x = imgs.reshape(2, 3, h, p, h, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    official = x.reshape(2, h * h, p**2 * 3)
    assert torch.equal(patchify(imgs, 4), official)


def test_grid_size_rejects_indivisible_sizes_with_the_values():
    assert grid_size((32, 48), 16) == (2, 3)
    with pytest.raises(ValueError, match=r"img_size=\(30, 32\) is not divisible by patch_size=4"):
        grid_size((30, 32), 4)
    with pytest.raises(ValueError, match="positive"):
        grid_size((32, 32), 0)


def test_unpatchify_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="do not match"):
        unpatchify(torch.zeros(1, 4, 48), 4, (2, 3), 3)


# ---------------------------------------------------------------------------- pooling
def test_pool_tokens_takes_the_cls_token_or_the_mean_of_the_others():
    tokens = torch.randn(2, 5, 3)
    assert torch.equal(pool_tokens(tokens, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_tokens(tokens, "mean"), tokens[:, 1:].sum(dim=1) / 4)
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean', got 'max'"):
        pool_tokens(tokens, "max")


# ---------------------------------------------------------------------------- sin-cos tables
@pytest.mark.parametrize("dim,grid", [(768, 14), (512, 14), (192, 8), (16, 3)])
def test_sincos_table_equals_official(dim, grid):
    ours = sincos_2d(dim, (grid, grid), cls_token=True)
    reference = torch.from_numpy(official_2d_sincos(dim, grid, cls_token=True)).float()
    assert ours.dtype == torch.float32
    assert torch.equal(ours, reference)


def test_sincos_non_square_first_half_encodes_column_second_half_row():
    table = sincos_2d(8, (2, 3))
    assert table.shape == (6, 8)
    assert torch.equal(table[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    # token (row 1, col 2) is index 1*3 + 2: column part encodes 2, row part encodes 1
    omega = torch.tensor([1.0, 0.01], dtype=torch.float64)
    expected = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)])
    assert torch.equal(table[5], expected.float())
    # the same column in another row shares the first half exactly
    assert torch.equal(table[2, :4], table[5, :4])


def test_sincos_rejects_widths_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(6, (2, 2))
