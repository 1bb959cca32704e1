"""Semantic segmentation heads over ViT block outputs.

A head reads ``num_features`` block outputs, shallow to deep, each reshaped to the patch grid (N, D, h, w), and
returns class logits (N, K, h', w') at some stride of the image; the caller upsamples them bilinearly to the image.
``auxiliary`` gives the logits of an auxiliary head that only adds a training loss (None where a head has none), and
``forward_with_auxiliary`` gives both for the price of one neck.

- :class:`LinearHead`: DINOv2's linear segmentation head (``BNHead``): BatchNorm and a 1x1 convolution on the last
  block, a linear classifier per token. About D*K parameters, a negligible cost; logits at the patch grid (stride =
  patch size).
- :class:`UperNet`: the head of the MAE and BEiT segmentation results. :class:`FeaturePyramid` (BEiT's
  ``fpn1..fpn4``, mmsegmentation's ``Feature2Pyramid``) turns 4 blocks into strides 4, 8, 16, 32; :class:`UperHead`
  (UPerNet, Xiao et al. 2018, mmsegmentation's ``UPerHead``: a pyramid pooling module on the deepest level and an
  FPN) decodes them to logits at stride 4; :class:`FCNHead` on the stride-16 level is the auxiliary head. With
  ViT-B (D=768), channels=512 and 150 classes it holds 41M parameters (the neck 7.1M, UPerHead 32M, the FCN head
  1.8M) and costs about 470 GFLOPs on a 512x512 image, mostly its 3x3 convolutions at stride 4: over twice ViT-B.

The submodule names follow BEiT (``neck.fpn1``) and mmsegmentation (``decode_head.psp_modules``, ``lateral_convs``,
``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``; ``auxiliary_head.convs``), so their checkpoints' keys look familiar.

BatchNorm here is plain ``nn.BatchNorm2d``; with the Lightning trainer's ``sync_batchnorm: true`` it becomes
``SyncBatchNorm`` across processes, as the mmsegmentation configs have it. In training, BatchNorm needs more than
one value per channel: the PPM's pool scale 1 gives a 1x1 map, so UperNet trains on batches of N >= 2 per process
(or N = 1 per process with SyncBatchNorm over several processes). mmsegmentation has the same limit; the heads say so
with a ValueError rather than PyTorch's message from deep inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# mmsegmentation's Feature2Pyramid accepts these rescales only.
_RESCALES = (4, 2, 1, 0.5)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_dropout(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}")


def _check_features(owner: str, features: Sequence[Tensor], count: int, embed_dim: int) -> None:
    if len(features) != count:
        raise ValueError(f"{owner} expects {count} features, got {len(features)}")
    for x in features:
        if x.ndim != 4 or x.shape[1] != embed_dim:
            raise ValueError(f"{owner} expects features of shape (N, {embed_dim}, h, w), got {tuple(x.shape)}")


def _check_batch_statistics(owner: str, module: nn.Module, batch_size: int, smallest_map: int) -> None:
    """Raise a ValueError where a training BatchNorm would see one value per channel (PyTorch refuses it).

    SyncBatchNorm is left alone: over several processes it pools the values of all of them.
    """
    if batch_size * smallest_map > 1:
        return
    if any(isinstance(m, nn.BatchNorm2d) and m.training for m in module.modules()):
        raise ValueError(
            f"{owner} in training mode needs more than one value per BatchNorm channel, got batch size {batch_size} "
            f"and a smallest map of {smallest_map} position(s): train with N >= 2 per process, or use SyncBatchNorm "
            "across processes (sync_batchnorm: true)"
        )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize as mmsegmentation's (align_corners=False); a no-op at the same size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _init_conv_seg(conv: nn.Conv2d) -> None:
    # mmsegmentation's BaseDecodeHead: Normal(std=0.01) on the classifier, so the first logits are near zero.
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, BatchNorm, ReLU: mmcv's ``ConvModule`` with its names ``conv``, ``bn``, ``activate``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: side of the square kernel; the padding keeps the map size (odd kernels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        # ConvModule's own init: Kaiming normal for a ReLU, fan_out; BatchNorm weight 1, bias 0 (PyTorch's default).
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class LinearHead(nn.Module):
    """DINOv2's linear segmentation head: BatchNorm and a 1x1 convolution on the last block output.

    Args:
        embed_dim: width D of the block outputs.
        num_classes: number of classes K.
    """

    num_features = 1

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_positive("embed_dim", embed_dim)
        _check_positive("num_classes", num_classes)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(embed_dim)
        self.conv_seg = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        _init_conv_seg(self.conv_seg)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features: 1 x (N, D, h, w) -> (N, K, h, w)."""
        _check_features("LinearHead", features, self.num_features, self.embed_dim)
        x = features[-1]
        _check_batch_statistics("LinearHead", self, x.shape[0], x.shape[2] * x.shape[3])
        return self.conv_seg(self.bn(x))

    def auxiliary(self, features: Sequence[Tensor]) -> Tensor | None:
        """No auxiliary head: None."""
        return None

    def forward_with_auxiliary(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """features: 1 x (N, D, h, w) -> ((N, K, h, w), None)."""
        return self(features), None


class FeaturePyramid(nn.Module):
    """The multi-scale neck of the BEiT and MAE segmentation code (mmsegmentation's ``Feature2Pyramid``).

    Block outputs all sit at the patch grid; this rescales the i-th by ``rescales[i]``: 4 by two stride-2 transposed
    convolutions with BatchNorm and GELU between, 2 by one, 1 unchanged, 0.5 by a 2x2 max pool (which floors an odd
    grid, h // 2). With the default and patch 16, the strides become 4, 8, 16, 32.

    Args:
        embed_dim: width D of the block outputs, kept at every level.
        rescales: the factor of each of the 4 levels, each one of 4, 2, 1, 0.5.
    """

    def __init__(self, embed_dim: int, rescales: Sequence[float] = _RESCALES) -> None:
        super().__init__()
        _check_positive("embed_dim", embed_dim)
        rescales = tuple(rescales)
        if len(rescales) != 4 or any(r not in _RESCALES for r in rescales):
            raise ValueError(f"rescales must be 4 values out of {_RESCALES}, got {rescales}")
        self.embed_dim = embed_dim
        self.rescales = rescales
        for i, r in enumerate(rescales, start=1):
            setattr(self, f"fpn{i}", self._level(embed_dim, r))

    @staticmethod
    def _level(d: int, rescale: float) -> nn.Module:
        # The transposed convolutions keep PyTorch's default init, as in BEiT and mmsegmentation.
        if rescale == 4:
            return nn.Sequential(
                nn.ConvTranspose2d(d, d, kernel_size=2, stride=2),
                nn.BatchNorm2d(d),
                nn.GELU(),
                nn.ConvTranspose2d(d, d, kernel_size=2, stride=2),
            )
        if rescale == 2:
            return nn.Sequential(nn.ConvTranspose2d(d, d, kernel_size=2, stride=2))
        if rescale == 1:
            return nn.Identity()
        return nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """features: 4 x (N, D, h, w) -> 4 x (N, D, r*h, r*w) for r in rescales (floored for 0.5)."""
        _check_features("FeaturePyramid", features, 4, self.embed_dim)
        h, w = features[0].shape[2:]
        if 0.5 in self.rescales and min(h, w) < 2:
            raise ValueError(f"FeaturePyramid's 0.5 rescale needs a grid of at least 2x2, got {h}x{w}")
        levels = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return [level(x) for level, x in zip(levels, features, strict=True)]


class PPM(nn.ModuleList):
    """Pyramid pooling module (PSPNet), as mmsegmentation's: for each scale s, average pool to s x s and a 1x1
    ConvBNReLU, each output resized back to the input's size.

    Args:
        in_channels: input channels.
        channels: channels of each branch.
        pool_scales: output side of each branch's pooling.
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels)) for s in pool_scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (N, C, h, w) -> len(pool_scales) x (N, channels, h, w)."""
        return [_resize(branch(x), x.shape[2:]) for branch in self]


class UperHead(nn.Module):
    """UPerNet's decoder (Xiao et al. 2018; mmsegmentation's ``UPerHead``): PPM on the deepest level, FPN top-down.

    Logits come at the size of the first (shallowest, finest) level, stride 4 behind the default neck.

    Args:
        embed_dim: channels of each of the 4 input levels.
        num_classes: number of classes K.
        channels: width of the decoder.
        pool_scales: the PPM's pooling sides.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_positive("embed_dim", embed_dim)
        _check_positive("num_classes", num_classes)
        _check_positive("channels", channels)
        pool_scales = tuple(pool_scales)
        if not pool_scales or any(s < 1 for s in pool_scales):
            raise ValueError(f"pool_scales must be one or more sides >= 1, got {pool_scales}")
        _check_dropout(dropout)
        self.embed_dim = embed_dim
        self.pool_scales = pool_scales
        self.psp_modules = PPM(embed_dim, channels, pool_scales)
        self.bottleneck = ConvBNReLU(embed_dim + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(embed_dim, channels) for _ in range(3))
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = ConvBNReLU(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_conv_seg(self.conv_seg)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """levels: 4 x (N, D, h_i, w_i), fine to coarse -> (N, K, h_0, w_0)."""
        _check_features("UperHead", levels, 4, self.embed_dim)
        deepest = levels[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels[:3], strict=True)]
        laterals.append(self.bottleneck(torch.cat([deepest, *self.psp_modules(deepest)], dim=1)))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:3], strict=True)] + [laterals[-1]]
        size = outs[0].shape[2:]
        x = self.fpn_bottleneck(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.conv_seg(self.dropout(x))


class FCNHead(nn.Module):
    """The auxiliary head of the MAE/BEiT UperNet configs (mmsegmentation's ``FCNHead``, one conv, no concat).

    Args:
        embed_dim: channels D of the input level.
        num_classes: number of classes K.
        channels: width of its 3x3 ConvBNReLU.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, embed_dim: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        _check_positive("embed_dim", embed_dim)
        _check_positive("num_classes", num_classes)
        _check_positive("channels", channels)
        _check_dropout(dropout)
        self.convs = nn.Sequential(ConvBNReLU(embed_dim, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_conv_seg(self.conv_seg)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, D, h, w) -> (N, K, h, w)."""
        return self.conv_seg(self.dropout(self.convs(x)))


class UperNet(nn.Module):
    """UPerNet over 4 ViT blocks, as in the MAE and BEiT segmentation results: neck, UPerHead, auxiliary FCNHead.

    ``forward`` gives the decode head's logits at 4x the patch grid (stride 4 for patch 16), ``auxiliary`` the FCN
    head's at the patch grid (the neck's third level, mmsegmentation's ``in_index=2``). The grid must be at least 2x2
    (the 0.5 level), and training batches hold N >= 2 per process unless BatchNorm is synchronised (module docstring).

    Args:
        embed_dim: width D of the block outputs.
        num_classes: number of classes K.
        channels: width of the UPerHead decoder.
        pool_scales: the PPM's pooling sides.
        dropout: Dropout2d probability before both classifiers.
        rescales: the neck's factor for each of the 4 blocks (see :class:`FeaturePyramid`).
        auxiliary_channels: width of the auxiliary FCN head; 0 builds none.
    """

    num_features = 4

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        rescales: Sequence[float] = _RESCALES,
        auxiliary_channels: int = 256,
    ) -> None:
        super().__init__()
        if auxiliary_channels < 0:
            raise ValueError(f"auxiliary_channels must be >= 0, got {auxiliary_channels}")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.neck = FeaturePyramid(embed_dim, rescales)
        self.decode_head = UperHead(embed_dim, num_classes, channels, pool_scales, dropout)
        self.auxiliary_head = (
            FCNHead(embed_dim, num_classes, auxiliary_channels, dropout) if auxiliary_channels else None
        )

    def _pyramid(self, features: Sequence[Tensor]) -> list[Tensor]:
        _check_features("UperNet", features, self.num_features, self.embed_dim)
        levels = self.neck(features)
        # The smallest map a BatchNorm normalises: a PPM branch (s x s) or the smallest level.
        smallest = min(min(self.decode_head.pool_scales) ** 2, *(x.shape[2] * x.shape[3] for x in levels))
        _check_batch_statistics("UperNet", self, features[0].shape[0], smallest)
        return levels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features: 4 x (N, D, h, w) -> (N, K, 4h, 4w) with the default rescales."""
        return self.decode_head(self._pyramid(features))

    def auxiliary(self, features: Sequence[Tensor]) -> Tensor | None:
        """features: 4 x (N, D, h, w) -> (N, K, h, w), or None without an auxiliary head."""
        if self.auxiliary_head is None:
            return None
        return self.auxiliary_head(self._pyramid(features)[2])

    def forward_with_auxiliary(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Both logits from one pass of the neck: ((N, K, 4h, 4w), (N, K, h, w) or None)."""
        levels = self._pyramid(features)
        aux = self.auxiliary_head(levels[2]) if self.auxiliary_head is not None else None
        return self.decode_head(levels), aux
