"""Vision Transformer building blocks with timm's parameter names.

``PatchEmbed.proj``, ``Block.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``: the same keys as
``timm.models.vision_transformer``, so state dicts move between this project, timm and the
official MAE code without renaming. ``CrossAttentionBlock`` (the CrossMAE decoder's block) uses
CrossMAE's names: ``norm1/cross_attn.q/cross_attn.kv/cross_attn.proj/norm2/mlp.fc1/mlp.fc2``.
"""

from __future__ import annotations

from functools import partial

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

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, T, D) -> (N, T, D)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
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
