"""Model sizes, declared once: named presets like the official ``models_mae.mae_vit_base_patch16``, and the size
that a checkpoint's tensors imply.

:data:`ENCODER_SIZES` is the one table of the paper's encoder sizes: the preset functions, timm's model names
(export) and the attention heads that a file's tensors cannot show all derive from it. The same presets ship as
YAML fragments in ``configs/model/`` for the CLI; a test keeps the two in agreement. Every preset accepts the
remaining :class:`MaskedAutoencoder` arguments (``img_size``, ``in_chans``, ``norm_pix_loss``, ...) as keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mae_lightning.checkpoint import Checkpoint, WeightsMismatchError
from mae_lightning.models.mae import MaskedAutoencoder
from mae_lightning.models.pos_embed import sincos_grid

# timm's names of the ViT sizes: width, depth and heads.
ENCODER_SIZES = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}
# The encoder's size as a model's arguments: what a classifier built on a checkpoint's encoder takes from it.
ENCODER_SIZE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# The paper's decoder for every ImageNet size: 8 blocks of width 512 with 16 heads.
PAPER_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
# A light decoder for 32x32 images (64 patches), as in small-scale MAE studies on CIFAR.
SMALL_IMAGE_DECODER = {"decoder_embed_dim": 128, "decoder_depth": 4, "decoder_num_heads": 4}


def _build(size: str, patch_size: int, decoder: dict[str, int], kwargs: dict[str, Any]) -> MaskedAutoencoder:
    return MaskedAutoencoder(**{"patch_size": patch_size, **ENCODER_SIZES[size], **decoder, **kwargs})


def mae_vit_tiny_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build("vit_tiny", 16, PAPER_DECODER, kwargs)


def mae_vit_small_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build("vit_small", 16, PAPER_DECODER, kwargs)


def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build("vit_base", 16, PAPER_DECODER, kwargs)


def mae_vit_large_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build("vit_large", 16, PAPER_DECODER, kwargs)


def mae_vit_huge_patch14(**kwargs: Any) -> MaskedAutoencoder:
    return _build("vit_huge", 14, PAPER_DECODER, kwargs)


def mae_vit_tiny_patch4_32(**kwargs: Any) -> MaskedAutoencoder:
    """ViT-Tiny on 32x32 images with 4x4 patches (64 patches), e.g. CIFAR-10."""
    return _build("vit_tiny", 4, SMALL_IMAGE_DECODER, {"img_size": 32, **kwargs})


def mae_vit_tiny_patch2_32(**kwargs: Any) -> MaskedAutoencoder:
    """ViT-Tiny on 32x32 images with 2x2 patches (256 patches), the strongest small-scale setting."""
    return _build("vit_tiny", 2, SMALL_IMAGE_DECODER, {"img_size": 32, **kwargs})


# The official file's names, so code written against models_mae keeps working.
mae_vit_base_patch16_dec512d8b = mae_vit_base_patch16
mae_vit_large_patch16_dec512d8b = mae_vit_large_patch16
mae_vit_huge_patch14_dec512d8b = mae_vit_huge_patch14


def describe_encoder(encoder: Mapping[str, Tensor], num_heads: int | None = None) -> dict:
    """The timm ``VisionTransformer`` arguments that this encoder's tensors imply.

    ``num_heads`` cannot be read from the weights; it comes from the checkpoint's hyperparameters when
    known, else from :data:`ENCODER_SIZES` (the size of the same width and depth).
    """
    embed_dim, in_chans, patch_size, _ = encoder["patch_embed.proj.weight"].shape
    depth = 1 + max(int(key.split(".")[1]) for key in encoder if key.startswith("blocks."))
    table = encoder["pos_embed"][0, 1:]
    # A sin-cos table knows its grid; a learned one is taken as square.
    grid = sincos_grid(table) or (round(table.shape[0] ** 0.5),) * 2
    named = {(size["embed_dim"], size["depth"]): name for name, size in ENCODER_SIZES.items()}.get((embed_dim, depth))
    info = {
        "img_size": [grid[0] * patch_size, grid[1] * patch_size],
        "patch_size": patch_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads or (ENCODER_SIZES[named]["num_heads"] if named else None),
        "mlp_ratio": encoder["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if named and info["img_size"][0] == info["img_size"][1]:
        info["timm_model"] = f"{named}_patch{patch_size}_{info['img_size'][0]}"
    return info


def encoder_size(checkpoint: Checkpoint) -> dict:
    """The encoder size of a checkpoint (:data:`ENCODER_SIZE_KEYS`).

    Read from the tensors of this project's checkpoints (pretraining or classifier) and of official or
    timm files; ``num_heads``, which tensors do not show, from the hyperparameters of a checkpoint
    written through the CLI, else from the paper's size of the same width and depth.

    Raises:
        WeightsMismatchError (a ValueError): no ViT encoder in the file, or ``num_heads`` cannot be known.
    """
    state = checkpoint.state_dict
    path = str(checkpoint.path)
    if "patch_embed.proj.weight" not in state or not any(key.startswith("blocks.") for key in state):
        raise WeightsMismatchError(f"{path!r} holds no ViT encoder (patch_embed.proj.weight, blocks.*)")
    info = describe_encoder(state, checkpoint.model_args.get("num_heads"))
    if info["num_heads"] is None:
        raise WeightsMismatchError(
            f"{path!r} does not record the attention heads of its {info['embed_dim']}-wide, {info['depth']}-block "
            "encoder: state num_heads in the model"
        )
    return {key: info[key] for key in ENCODER_SIZE_KEYS}
