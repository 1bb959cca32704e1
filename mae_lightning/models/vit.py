"""Vision Transformer building blocks with timm's parameter names.

``PatchEmbed.proj``, ``Block.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``: the same keys as
``timm.models.vision_transformer``, so state dicts move between this project, timm and the
official MAE code without renaming. ``CrossAttentionBlock`` (the CrossMAE decoder's block) uses
CrossMAE's names: ``norm1/cross_attn.q/cross_attn.kv/cross_attn.proj/norm2/mlp.fc1/mlp.fc2``.
``WindowAttentionBlock`` (Audio-MAE's local decoder block: attention within Swin-style, optionally shifted,
windows of the patch grid) has ``Block``'s keys.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mae_lightning.ops import gather_tokens, grid_size

# The official MAE models use LayerNorm with eps 1e-6 everywhere (timm's ViT default).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution.

    Args:
        img_size: image (height, width).
        patch_size: side of a square patch.
        in_chans: image channels.
        embed_dim: token width.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = grid_size(self.img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def check(self, imgs: Tensor) -> Tensor:
        """Raise a ValueError unless imgs is (N, in_chans, *img_size); return it unchanged."""
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans or tuple(imgs.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected images of shape (N, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(imgs.shape)}"
            )
        return imgs

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs: (N, C, H, W) -> (N, L, D)."""
        return self.proj(self.check(imgs)).flatten(2).transpose(1, 2)

    def embed_patches(self, patches: Tensor, ids: Tensor) -> Tensor:
        """Embed only some patches: patches (N, L, p*p*C) from ``patchify``, ids (N, K) -> (N, K, D).

        The convolution is a linear map per patch, so embedding the K visible patches alone gives the
        same tokens as :meth:`forward` followed by a gather, with K/L of the work (a quarter in MAE).
        """
        # conv weight (D, C, p, q) -> (D, p*q*C), the (p, q, c) order of patchify's vectors
        weight = self.proj.weight.permute(0, 2, 3, 1).reshape(self.proj.out_channels, -1)
        return F.linear(gather_tokens(patches, ids), weight, self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and PyTorch's SDPA kernel."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (N, T, D) -> (N, T, D); ``attn_mask``: an optional boolean mask broadcastable to (N, heads, T, T),
        True where a query may attend to a key (passed to ``F.scaled_dot_product_attention``)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Two linear layers with an exact GELU between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``): drops a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged; identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``.

    ``drop_path`` (stochastic depth, for fine-tuning) adds no parameters, so the keys stay timm's.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries to another set of tokens, with PyTorch's SDPA kernel.

    Queries come from ``x`` alone (``q``), keys and values from ``context`` (a fused ``kv``), as in
    CrossMAE (Fu et al., 2024): the queries never attend to each other.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (N, T, D) queries, context: (N, S, D) -> (N, T, D)."""
        n, t, d = x.shape
        head_dim = d // self.num_heads
        q = self.q(x).reshape(n, t, self.num_heads, head_dim).transpose(1, 2)
        kv = self.kv(context).reshape(n, context.shape[1], 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block: ``x + cross_attn(norm1(x), context)`` then ``x + mlp(norm2(x))``.

    The context is used as given (CrossMAE's choice): in the MAE decoder it is the encoder's output,
    already normalised by the encoder's final norm before ``decoder_embed``.

    Args:
        dim: token width of the queries and of the context.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (N, T, D) queries, context: (N, S, D) -> (N, T, D)."""
        x = x + self.cross_attn(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class WindowAttentionBlock(nn.Module):
    """Pre-norm block attending within windows of the patch grid (Swin's W-MSA / SW-MSA, Audio-MAE's local decoder).

    ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` as :class:`Block`, with the same parameter names, but each
    token attends only to the tokens of its ``window[0] x window[1]`` window of the grid. The normalised grid is
    padded with zeros at the bottom and right to multiples of the window (padded tokens are never attended to and
    are cropped after the attention), rolled by ``-shift`` (Swin's cyclic shift), split into windows, attended
    within each window and put back. After a shift the windows on the far edges hold tokens from both sides of the
    wrap; Swin's attention mask keeps those apart, so a token never attends to one that is not its grid neighbour.
    A window larger than the grid is clamped to it, with no shift along a side that one window covers (as Swin).
    No relative position bias: the decoder tokens already carry sin-cos positions.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        window: window (height, width) in tokens.
        shift: cyclic shift (rows, columns) before windowing; Swin alternates (0, 0) and half a window.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        window: tuple[int, int] = (4, 4),
        shift: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        window, shift = tuple(window), tuple(shift)
        if len(window) != 2 or min(window) < 1:
            raise ValueError(f"window must be two positive sizes, got {window}")
        if len(shift) != 2 or not (0 <= shift[0] < window[0] and 0 <= shift[1] < window[1]):
            raise ValueError(f"shift must be two sizes in [0, window), got shift={shift} for window={window}")
        self.window = window
        self.shift = shift
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (N, gh*gw, D) tokens in row-major grid order, grid: (gh, gw) -> (N, gh*gw, D)."""
        n, length, d = x.shape
        gh, gw = grid
        if length != gh * gw:
            raise ValueError(f"expected {gh} x {gw} = {gh * gw} tokens, got {length}")
        (wh, ww), (sh, sw) = _window_and_shift(grid, self.window, self.shift)
        ph, pw = -gh % wh, -gw % ww
        y = F.pad(self.norm1(x).view(n, gh, gw, d), (0, 0, 0, pw, 0, ph))
        hp, wp = gh + ph, gw + pw
        if sh or sw:
            y = torch.roll(y, (-sh, -sw), dims=(1, 2))
        # (N, hp, wp, D) -> (N * windows, wh * ww, D), the windows of a sample consecutive, each row-major
        y = y.view(n, hp // wh, wh, wp // ww, ww, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, d)
        mask = _window_mask(grid, (hp, wp), (wh, ww), (sh, sw), x.device)
        y = self.attn(y, None if mask is None else mask.repeat(n, 1, 1, 1))
        y = y.view(n, hp // wh, wp // ww, wh, ww, d).permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, d)
        if sh or sw:
            y = torch.roll(y, (sh, sw), dims=(1, 2))
        x = x + y[:, :gh, :gw].reshape(n, length, d)
        return x + self.mlp(self.norm2(x))


def _window_and_shift(
    grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Swin's clamp: a window no larger than the grid, and no shift along a side that one window covers."""
    sizes = (min(window[0], grid[0]), min(window[1], grid[1]))
    shifts = (0 if window[0] >= grid[0] else shift[0], 0 if window[1] >= grid[1] else shift[1])
    return sizes, shifts


def _window_mask(
    grid: tuple[int, int],
    padded: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device,
) -> Tensor | None:
    """Which key each query of a window may attend to: (windows, 1, T, T) booleans, or None where all may.

    A key is allowed when it is a real token (not padding) and lies in the query's region: after the cyclic
    shift, the last ``window - shift`` and the last ``shift`` rows (and columns) of the padded grid came from
    opposite sides of the wrap (Swin's ``img_mask``). Every token may attend to itself, so no row of a padded
    query is empty (its output is cropped; an empty row would give NaN and NaN gradients).
    """
    (gh, gw), (hp, wp), (wh, ww), (sh, sw) = grid, padded, window, shift
    if (gh, gw) == (hp, wp) and not (sh or sw):
        return None
    real = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    real[:gh, :gw] = True
    real = torch.roll(real, (-sh, -sw), dims=(0, 1))

    def regions(size: int, win: int, s: int) -> Tensor:
        index = torch.arange(size, device=device)
        if not s:
            return torch.zeros(size, dtype=torch.long, device=device)
        return (index >= size - win).long() + (index >= size - s).long()

    region = regions(hp, wh, sh)[:, None] * 3 + regions(wp, ww, sw)[None, :]

    def windows(t: Tensor) -> Tensor:  # (hp, wp) -> (windows, wh * ww)
        return t.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)

    real, region = windows(real), windows(region)
    allowed = (region[:, :, None] == region[:, None, :]) & real[:, None, :]
    allowed |= torch.eye(wh * ww, dtype=torch.bool, device=device)
    return allowed[:, None]
