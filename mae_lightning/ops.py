"""The shape primitives MAE is made of: patches, token gathers and pooling, 2-D sin-cos position tables.

Every function here matches facebookresearch/mae (``models_mae.py`` and ``util/pos_embed.py``)
value for value, generalised to any channel count and to non-square images. Patch vectors are
laid out ``(p, q, c)`` (row in patch, column in patch, channel), as in the official code, so that
an official ``decoder_pred`` layer predicts the same pixels here. Which patches are hidden is
masking maths, in ``masking.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_size(img_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Number of patches along (height, width); raises if the image does not divide evenly.

    Args:
        img_size: image (height, width) in pixels.
        patch_size: side of a square patch in pixels.
    """
    height, width = img_size
    if patch_size <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"img_size and patch_size must be positive, got img_size={img_size}, patch_size={patch_size}")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"img_size={img_size} is not divisible by patch_size={patch_size}: "
            f"both height and width must be multiples of the patch size"
        )
    return height // patch_size, width // patch_size


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened patches.

    imgs: (N, C, H, W) -> (N, L, p*p*C) with L = (H/p) * (W/p), patches in row-major order.
    """
    n, c, h, w = imgs.shape
    gh, gw = grid_size((h, w), patch_size)
    p = patch_size
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`.

    patches: (N, L, p*p*C) -> (N, C, gh*p, gw*p), where ``grid = (gh, gw)`` and L = gh * gw.
    """
    n, length, dim = patches.shape
    gh, gw = grid
    p = patch_size
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not match grid={grid}, "
            f"patch_size={patch_size}, channels={channels} (expected (N, {gh * gw}, {p * p * channels}))"
        )
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def inverse_permutation(order: Tensor) -> Tensor:
    """order: (N, T), a permutation of 0..T-1 per row -> its inverse (N, T).

    By a scatter: the same values as ``argsort(order)``, in O(T) instead of O(T log T).
    """
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: (N, L, D), ids: (N, K) -> (N, K, D), row ``ids[n, k]`` of sample n."""
    # expand (a view) instead of repeat (a copy): gather reads the index without materialising it.
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# The poolings of encoder tokens into one vector per image.
POOLS = ("cls", "mean")


def pool_tokens(tokens: Tensor, pool: str) -> Tensor:
    """tokens: (N, 1 + T, D), the cls token first -> (N, D): the cls token (``"cls"``) or the mean of the others."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")


def sincos_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """1-D sin-cos table: positions (M,) -> (M, embed_dim), first half sin, second half cos."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos table, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, grid: tuple[int, int], cls_token: bool = False) -> Tensor:
    """Fixed 2-D sin-cos position table of the official code, for a (gh, gw) patch grid.

    The first half of each vector encodes the column, the second half the row (the official
    code's ``meshgrid(grid_w, grid_h)`` order), rows of the table in row-major patch order.

    Returns:
        (gh*gw, embed_dim) float32, or (1 + gh*gw, embed_dim) with a leading zero row for the cls token.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    table = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=table.dtype), table], dim=0)
    return table.float()
