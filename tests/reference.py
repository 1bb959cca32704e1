"""The code that the tests compare against, ported from its source: facebookresearch/mae (models_mae.py,
util/pos_embed.py) and microsoft/unilm (beit/masking_generator.py); each function or class names the
original it follows."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from mae_lightning.ops import patchify


# ---------------------------------------------------------------------------- facebookresearch/mae models_mae.py
def official_random_masking(x, mask_ratio, noise):
    """facebookresearch/mae models_mae.py random_masking, with the noise passed in."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def manual_block(block, x):
    """timm's Block with attention written out (softmax(q k^T / sqrt(d)) v), as in the official code."""
    n, t, d = x.shape
    heads = block.attn.num_heads
    h = block.norm1(x)
    qkv = block.attn.qkv(h).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
    h = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, d)
    x = x + block.attn.proj(h)
    h = block.norm2(x)
    return x + block.mlp.fc2(F.gelu(block.mlp.fc1(h)))


def official_target(model, patches):
    """The official target of patches (..., p*p*C): per-patch normalised with ``norm_pix_loss``."""
    if model.norm_pix_loss:
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        patches = (patches - mean) / (var + 1.0e-6) ** 0.5
    return patches


def official_forward(model, imgs, mask_ratio, noise):
    """facebookresearch/mae MaskedAutoencoderViT.forward, line by line, on our parameters."""
    x = model.patch_embed.proj(imgs).flatten(2).transpose(1, 2)
    x = x + model.pos_embed[:, 1:, :]
    x, mask, ids_restore = official_random_masking(x, mask_ratio, noise)
    cls_token = model.cls_token + model.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    for blk in model.blocks:
        x = manual_block(blk, x)
    x = model.norm(x)

    x = model.decoder_embed(x)
    mask_tokens = model.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = manual_block(blk, x)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:, :]

    target = official_target(model, patchify(imgs, model.patch_size))
    loss = ((pred - target) ** 2).mean(dim=-1)
    loss = (loss * mask).sum() / mask.sum()
    return loss, pred, mask


# ---------------------------------------------------------------------------- facebookresearch/mae util/pos_embed.py
def official_2d_sincos(embed_dim, grid_size_, cls_token=False):
    """facebookresearch/mae util/pos_embed.py, verbatim in numpy (square grids only)."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        pos = pos.reshape(-1)
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size_, dtype=np.float32)
    grid_w = np.arange(grid_size_, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size_, grid_size_])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def official_interpolate_pos_embed(pos_embed_checkpoint, num_patches, num_extra_tokens):
    """facebookresearch/mae util/pos_embed.py interpolate_pos_embed, on a tensor instead of a model."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches**0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


# ---------------------------------------------------------------------------- microsoft/unilm beit/masking_generator.py
class BEiTMaskingGenerator:
    """microsoft/unilm beit/masking_generator.py ``MaskingGenerator``, verbatim but for numpy's removed ``np.int``."""

    def __init__(self, input_size, num_masking_patches, min_num_patches=4, max_num_patches=None, min_aspect=0.3):
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros(shape=(self.height, self.width), dtype=int)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = min(self.num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask
