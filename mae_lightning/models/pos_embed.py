"""Position tables: the fixed 2-D sin-cos tables of MAE, and tables that follow the patch grid of the model
they are loaded into.

:func:`sincos_2d` is the official ``util/pos_embed.get_2d_sincos_pos_embed``, value for value, for any (non-square)
grid. Loading (``models/weights.py``) adapts a file's tables with :func:`adapt_position_tables`: a fixed sin-cos
table is recomputed for the new grid, exactly; a learned one (fine-tuned models) is resized bicubically, as the
official ``util/pos_embed.interpolate_pos_embed`` (timm's ``resample_abs_pos_embed`` does the same).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mae_lightning.checkpoint import WeightsMismatchError


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


def resize_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a learned position table, the official ``interpolate_pos_embed``.

    The leading (cls) tokens are kept as they are; the patch part is viewed as an image of the
    old grid, resized with ``F.interpolate(mode="bicubic", align_corners=False)`` and flattened back.

    pos_embed: (1, P + gh*gw, D) -> (1, P + new_gh*new_gw, D), P the number of leading tokens.
    """
    num_patches = old_grid[0] * old_grid[1]
    num_prefix = pos_embed.shape[1] - num_patches
    if num_prefix < 0:
        raise WeightsMismatchError(f"a table of {pos_embed.shape[1]} tokens cannot hold a {old_grid} grid")
    dim = pos_embed.shape[-1]
    prefix_tokens, patch_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    patch_tokens = patch_tokens.reshape(-1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_tokens = F.interpolate(patch_tokens, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_tokens = patch_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([prefix_tokens, patch_tokens], dim=1)


def sincos_grid(table: Tensor, atol: float = 1e-5) -> tuple[int, int] | None:
    """The (gh, gw) grid whose fixed 2-D sin-cos table ``table`` (L, D) is, or None for a learned table."""
    length, dim = table.shape
    if dim % 4:
        return None
    for gh in range(1, length + 1):
        if length % gh == 0:
            candidate = sincos_2d(dim, (gh, length // gh))
            if torch.allclose(table.float(), candidate, atol=atol, rtol=0):
                return gh, length // gh
    return None


def adapt_position_tables(
    state_dict: dict[str, Tensor], module: nn.Module, grid: tuple[int, int] | None = None
) -> dict[str, str]:
    """Fit every ``*pos_embed`` of ``state_dict`` to the patch grid of ``module``, in place.

    A fixed sin-cos table is recomputed for the new grid (exact, whatever grid it was made for);
    a learned table is resized bicubically, from ``grid`` when given, else from the square grid its
    length implies. The leading (cls) rows are kept. Tables of another width are left for the
    shape check to report.

    Returns:
        key -> a sentence saying what was done, for the tables that changed.
    """
    targets = module.state_dict()
    changes: dict[str, str] = {}
    for key, table in list(state_dict.items()):
        if not key.endswith("pos_embed") or key not in targets or table.ndim != 3:
            continue
        target = targets[key]
        if target.ndim != 3 or target.shape[-1] != table.shape[-1]:
            continue
        new_grid = _module_grid(module, key, target.shape[1])
        if new_grid is None:
            continue
        num_prefix = target.shape[1] - new_grid[0] * new_grid[1]
        source_patches = table.shape[1] - num_prefix
        if source_patches <= 0:
            continue
        old_sincos = sincos_grid(table[0, num_prefix:])
        if old_sincos is not None:
            if old_sincos == tuple(new_grid) and table.shape == target.shape:
                continue
            fresh = sincos_2d(table.shape[-1], new_grid).to(table.dtype)[None]
            state_dict[key] = torch.cat([table[:, :num_prefix], fresh], dim=1)
            changes[key] = f"sin-cos table recomputed for the {_fmt(new_grid)} grid (was {_fmt(old_sincos)})"
            continue
        if table.shape == target.shape:
            continue
        old_grid = tuple(grid) if grid is not None else _square(source_patches)
        if old_grid is None or old_grid[0] * old_grid[1] != source_patches:
            raise WeightsMismatchError(
                f"{key}: the file's learned table has {source_patches} patch positions, which is no square grid; "
                f"pass the grid it was trained on (pos_embed_grid=(rows, cols))"
            )
        state_dict[key] = resize_pos_embed(table, old_grid, new_grid)
        changes[key] = f"learned table resized bicubically from the {_fmt(old_grid)} grid to {_fmt(new_grid)}"
    return changes


def _module_grid(module: nn.Module, key: str, length: int) -> tuple[int, int] | None:
    # The table's owner has a timm-style `patch_embed` with `grid_size` (this project's and timm's do).
    owner = key.rsplit(".", 1)[0] + "." if "." in key else ""
    try:
        patch_embed = module.get_submodule(owner + "patch_embed")
        grid = tuple(patch_embed.grid_size)
        if len(grid) == 2:
            return grid
    except AttributeError:
        pass
    # No patch embedding next to it: a square grid with one cls token is the only safe reading.
    return _square(length - 1)


def _square(length: int) -> tuple[int, int] | None:
    side = math.isqrt(max(length, 0))
    return (side, side) if side * side == length and side > 0 else None


def _fmt(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"
