"""The segmentation network: a ViT encoder whose block outputs feed a dense head, on images of any size.

:class:`Segmenter` is the classifier's :class:`~mae_lightning.models.VisionTransformer` (the same parameter names, so a
pretraining checkpoint's encoder loads by name and its size is read from the checkpoint) with the classification head
replaced by a segmentation head of ``models/segmentation_heads.py`` reading the outputs of some of its blocks. Any
image size works: the image is padded to the patch grid and the learned position table resized (bicubic, as
mmsegmentation's ``resize_pos_embed``) to the grid, and the logits are cropped back to the image.
:func:`sliding_window` is mmsegmentation's ``slide`` inference for images larger than the training crops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mae_lightning.models.classifier import VisionTransformer
from mae_lightning.models.pos_embed import resize_pos_embed
from mae_lightning.models.segmentation_heads import LinearHead, UperNet

HEADS = {"linear": LinearHead, "upernet": UperNet}


def default_out_indices(depth: int, count: int) -> list[int]:
    """The blocks a head reads: the last for one feature; for four those of the BEiT / MAE segmentation code
    (``[3, 5, 7, 11]`` of 12 blocks, ``[7, 11, 15, 23]`` of 24: the ends of the thirds and of the first half)."""
    if count == 1:
        return [depth - 1]
    if depth < count:
        raise ValueError(f"a head reading {count} block outputs needs at least {count} blocks, got depth={depth}")
    indices = sorted({depth // 3 - 1, depth // 2 - 1, 2 * depth // 3 - 1, depth - 1})
    return indices if len(indices) == count else list(range(depth - count, depth))


class Segmenter(VisionTransformer):
    """ViT encoder + segmentation head: images (N, C, H, W) of any size -> class logits (N, num_classes, H, W).

    Args:
        img_size: the training crop (height, width), or its side; multiples of ``patch_size``. Other sizes are
            read too (evaluation on whole images): padded to the patch grid, with the position table resized.
        patch_size: side of a square patch. The encoder's size (``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``) may be left out of a config: the command line takes it from the ``pretrained``
            checkpoint, as for the classifiers.
        in_chans: image channels.
        num_classes: classes of the masks (the ignore index aside).
        embed_dim: width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        drop_path_rate: stochastic depth of the last block (the paper's segmentation recipe: 0.1).
        head: ``"upernet"`` (the paper's: a multi-scale neck, then UperNet's PPM + FPN, and an auxiliary FCN head)
            or ``"linear"`` (BatchNorm + a per-patch linear classifier, upsampled bilinearly).
        out_indices: the blocks (0-based) whose outputs the head reads, shallow to deep; default: the last block
            for ``linear``, and for ``upernet`` the BEiT / MAE choice (see :func:`default_out_indices`).
        head_channels: width of UperNet's PPM and FPN (512 in mmsegmentation's ViT configs, 768 in its MAE one).
        auxiliary_channels: width of UperNet's auxiliary FCN head (0: none).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 512,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 150,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        head: str = "upernet",
        out_indices: list[int] | None = None,
        head_channels: int = 512,
        auxiliary_channels: int = 256,
    ) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be 'linear' or 'upernet', got {head!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 to segment, got {num_classes}")
        # The encoder of the classifier, without its pooling norm and classification head.
        super().__init__(
            img_size, patch_size, in_chans, 0, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, global_pool=True
        )
        del self.fc_norm
        self.num_classes = num_classes
        self.head_name = head
        if head == "upernet":
            self.head = UperNet(embed_dim, num_classes, channels=head_channels, auxiliary_channels=auxiliary_channels)
        else:
            self.head = LinearHead(embed_dim, num_classes)
        count = self.head.num_features
        self.out_indices = list(out_indices) if out_indices is not None else default_out_indices(depth, count)
        if len(self.out_indices) != count or not all(0 <= i < depth for i in self.out_indices):
            raise ValueError(
                f"the {head} head reads {count} block output(s): out_indices must name {count} of the blocks "
                f"0..{depth - 1}, got {self.out_indices}"
            )

    def grid_features(self, imgs: Tensor) -> list[Tensor]:
        """The outputs of the blocks of ``out_indices`` as grids: (N, C, H, W) -> each (N, D, H/p, W/p).

        H and W must be multiples of the patch size (:meth:`forward` pads them); the position table follows the grid.
        """
        patch = self.patch_embed.patch_size
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans or imgs.shape[-2] % patch or imgs.shape[-1] % patch:
            raise ValueError(
                f"expected images (N, {self.in_chans}, H, W) with H and W multiples of {patch}, got {tuple(imgs.shape)}"
            )
        grid = (imgs.shape[-2] // patch, imgs.shape[-1] // patch)
        pos_embed = self.pos_embed
        if grid != self.patch_embed.grid_size:
            pos_embed = resize_pos_embed(pos_embed, self.patch_embed.grid_size, grid)
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + pos_embed[:, 1:]
        cls_token = (self.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1)
        outputs = {}
        for index, block in enumerate(self.blocks[: max(self.out_indices) + 1]):
            x = block(x)
            if index in self.out_indices:
                outputs[index] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return [outputs[index] for index in self.out_indices]

    def forward_with_auxiliary(self, imgs: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits, auxiliary logits or None), both (N, num_classes, H, W) at the size of ``imgs``."""
        height, width = imgs.shape[-2:]
        patch = self.patch_embed.patch_size
        # Pad at the bottom and the right to the patch grid; the padding's logits are cropped off.
        padded = F.pad(imgs, (0, -width % patch, 0, -height % patch))
        logits, auxiliary = self.head.forward_with_auxiliary(self.grid_features(padded))
        size = padded.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
        if auxiliary is not None:
            auxiliary = F.interpolate(auxiliary, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
        return logits, auxiliary

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs (N, C, H, W), any H and W -> logits (N, num_classes, H, W)."""
        return self.forward_with_auxiliary(imgs)[0]

    def forward_features(self, imgs: Tensor) -> Tensor:
        """Mean of the last block's patch tokens, (N, C, H, W) -> (N, D): a segmenter's features for the kNN monitor."""
        return self.grid_features(imgs)[-1].mean(dim=(2, 3))


def sliding_window(
    forward: Callable[[Tensor], Tensor], imgs: Tensor, crop: tuple[int, int], stride: tuple[int, int], num_classes: int
) -> Tensor:
    """mmsegmentation's ``slide`` inference: logits of overlapping crops, averaged where they overlap.

    Crops of ``crop`` (height, width) every ``stride`` pixels, the last ones flush with the bottom and right edges
    (an image smaller than a crop is one crop of its own size); ``forward`` maps (N, C, h, w) to (N, K, h, w).

    imgs: (N, C, H, W) -> (N, num_classes, H, W).
    """
    height, width = imgs.shape[-2:]
    rows = max(math.ceil((height - crop[0]) / stride[0]), 0) + 1
    cols = max(math.ceil((width - crop[1]) / stride[1]), 0) + 1
    logits = imgs.new_zeros(imgs.shape[0], num_classes, height, width, dtype=torch.float32)
    counts = imgs.new_zeros(1, 1, height, width, dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            top = max(min(row * stride[0], height - crop[0]), 0)
            left = max(min(col * stride[1], width - crop[1]), 0)
            bottom, right = min(top + crop[0], height), min(left + crop[1], width)
            logits[..., top:bottom, left:right] += forward(imgs[..., top:bottom, left:right]).float()
            counts[..., top:bottom, left:right] += 1
    return logits / counts
