"""The shape primitives MAE is made of: patches, token gathers and pooling.

Every function here matches facebookresearch/mae (``models_mae.py``)
value for value, generalised to any channel count and to non-square images. Patch vectors are
laid out ``(p, q, c)`` (row in patch, column in patch, channel), as in the official code, so that
an official ``decoder_pred`` layer predicts the same pixels here. Which patches are hidden is
masking maths, in ``masking.py``; the 2-D sin-cos position tables are in ``models/pos_embed.py``.
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
