"""The ViT classifier that linear probing and fine-tuning train, and loading a pretrained MAE encoder into it.

The official ``models_vit.VisionTransformer`` (a timm ViT): the same parameter names as the MAE
encoder (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``) plus ``fc_norm``
(global pooling) and ``head``, so an encoder moves in by name and a timm ViT state dict loads too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from mae_lightning.checkpoint import ENCODER_KEYS, HEAD_KEYS, Checkpoint, WeightsMismatchError, part, read_checkpoint
from mae_lightning.models.pos_embed import sincos_2d
from mae_lightning.models.presets import ENCODER_SIZE_KEYS
from mae_lightning.models.vit import Block, LayerNorm, PatchEmbed
from mae_lightning.models.weights import load_weights
from mae_lightning.ops import pool_tokens


class VisionTransformer(nn.Module):
    """ViT encoder with a classification head: cls token (after ``norm``) or mean of the patch tokens (``fc_norm``).

    Args:
        img_size: image side, or (height, width); multiples of ``patch_size``.
        patch_size: side of a square patch in pixels. The encoder's size (``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``) may be left out of a classifier's config: the command line then
            takes it from the ``pretrained`` checkpoint (or the ``ckpt_path``); stated, it must agree.
        in_chans: image channels.
        num_classes: outputs of ``head``; 0 makes ``head`` the identity (features only).
        embed_dim: width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        drop_path_rate: stochastic depth of the last block; block ``i`` gets ``rate * i / (depth - 1)``.
        global_pool: classify the mean patch token through ``fc_norm`` (the paper's fine-tuning) instead of
            the cls token through ``norm`` (its linear probe).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        global_pool: bool = True,
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        size = dict(zip(ENCODER_SIZE_KEYS, (patch_size, embed_dim, depth, num_heads, mlp_ratio), strict=True))
        unstated = [name for name, value in size.items() if value is None]
        if unstated:
            raise ValueError(
                f"the classifier's {', '.join(unstated)} are not stated: state them, or leave them out of a config "
                "whose `pretrained` (or `ckpt_path`) checkpoint has them"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 for the 2-D sin-cos table, got {embed_dim}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Trained here (as timm's ViT), and started from the pretraining's fixed sin-cos table.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, rate) for rate in rates])
        if global_pool:
            self.fc_norm = LayerNorm(embed_dim)
        else:
            self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    def _init_weights(self) -> None:
        # The MAE initialisation, so that a randomly initialised classifier is the same network MAE starts from.
        self.pos_embed.data.copy_(sincos_2d(self.embed_dim, self.patch_embed.grid_size, cls_token=True)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=2e-5)  # the official fine-tuning's head init

    def no_weight_decay(self) -> set[str]:
        """Names left out of weight decay besides biases and norms, as timm's ViT."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, imgs: Tensor) -> Tensor:
        """Pooled features before the head: imgs (N, C, H, W) -> (N, D)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        if self.global_pool:
            return self.fc_norm(pool_tokens(x, "mean"))
        return pool_tokens(self.norm(x), "cls")

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs (N, C, H, W) -> logits (N, num_classes)."""
        return self.head(self.forward_features(imgs))


def read_pretrained(path: str | Path) -> Checkpoint:
    """The ``pretrained`` file, opened once (see :func:`~mae_lightning.checkpoint.read_checkpoint`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} does not exist")
    return read_checkpoint(path)


def load_pretrained_encoder(model: VisionTransformer, path: str | Path) -> dict[str, str]:
    """Load a pretrained MAE encoder into ``model``; the head (and ``fc_norm`` with global pooling) stay new.

    A file with a head (an official fine-tuned ``.pth``, a fine-tuning checkpoint) gives its encoder
    only, as a pretraining file does. An encoder pretrained at another image size fits: its sin-cos
    position table is recomputed for the model's patch grid (a learned one is resized bicubically, as
    the official ``interpolate_pos_embed``), and the change is returned and logged.

    Returns:
        key -> what was done to it, for the position tables that were adapted.

    Raises:
        WeightsMismatchError (a ValueError): naming the tensors, when the checkpoint's architecture is
            not the model's (a different width, depth or patch size).
    """
    # The paper starts the head from new, and with global pooling fc_norm, which replaces the final norm.
    kept = [key for key in ENCODER_KEYS if not (model.global_pool and key == "norm.")]
    state = part(read_pretrained(path).state_dict, kept)
    try:
        report = load_weights(model, state, strict=True, expected_missing=[f"{key}*" for key in HEAD_KEYS])
    except WeightsMismatchError as err:
        raise WeightsMismatchError(f"pretrained checkpoint {str(path)!r}: {err}") from None
    rank_zero_info(f"pretrained checkpoint {str(path)!r}: {report.message()}")
    return report.resized


def load_classifier(model: VisionTransformer, path: str | Path) -> dict[str, str]:
    """Load a trained classifier (or segmenter) into ``model`` as published: encoder, final norm and head.

    For evaluating a file as it is: an official fine-tuned ``mae_finetuned_vit_*.pth`` (``fc_norm`` and
    ``head``), an official linear probe's (``head.0`` BatchNorm statistics and ``head.1``, as
    :class:`~mae_lightning.LinearProbe`'s head) or a checkpoint of this project's classifiers. Every key
    of ``model`` must be in the file; a learned position table of another grid is resized bicubically.

    Returns:
        key -> what was done to it, for the position tables that were adapted.

    Raises:
        WeightsMismatchError (a ValueError): the file has no head, or does not fit ``model``.
    """
    state = read_pretrained(path).state_dict
    if not part(state, ["head."]):
        raise WeightsMismatchError(
            f"pretrained checkpoint {str(path)!r} has no head (no head.* weights) to evaluate: "
            "fine-tune, linear-probe or segment with it first, or pass the trained checkpoint with --ckpt_path"
        )
    try:
        report = load_weights(model, state, strict=True)
    except WeightsMismatchError as err:
        raise WeightsMismatchError(f"pretrained checkpoint {str(path)!r}: {err}") from None
    rank_zero_info(f"pretrained checkpoint {str(path)!r}, evaluated as published: {report.message()}")
    return report.resized


def load_for_stage(model: VisionTransformer, path: str | Path, stage: str) -> None:
    """The weights file of a downstream protocol (classifiers, segmentation): ``fit`` starts from its encoder
    (:func:`load_pretrained_encoder`, the head new); other stages evaluate it as published (:func:`load_classifier`)."""
    if stage == "fit":
        load_pretrained_encoder(model, path)
    else:
        load_classifier(model, path)
