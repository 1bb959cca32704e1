"""Named model sizes, as functions like the official ``models_mae.mae_vit_base_patch16``.

The same sizes ship as YAML fragments in ``configs/model/`` for the CLI; a test keeps the two in
agreement. Every preset accepts the remaining :class:`MaskedAutoencoder` arguments (``img_size``,
``in_chans``, ``norm_pix_loss``, ...) as keywords.
"""

from __future__ import annotations

from typing import Any

from mae_lightning.models.mae import MaskedAutoencoder

# The paper's decoder for every ImageNet size: 8 blocks of width 512 with 16 heads.
PAPER_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
# A light decoder for 32x32 images (64 patches), as in small-scale MAE studies on CIFAR.
SMALL_IMAGE_DECODER = {"decoder_embed_dim": 128, "decoder_depth": 4, "decoder_num_heads": 4}


def _build(arch: dict[str, Any], kwargs: dict[str, Any]) -> MaskedAutoencoder:
    return MaskedAutoencoder(**{**arch, **kwargs})


def mae_vit_tiny_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, **PAPER_DECODER), kwargs)


def mae_vit_small_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, **PAPER_DECODER), kwargs)


def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, **PAPER_DECODER), kwargs)


def mae_vit_large_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _build(dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **PAPER_DECODER), kwargs)


def mae_vit_huge_patch14(**kwargs: Any) -> MaskedAutoencoder:
    return _build(dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **PAPER_DECODER), kwargs)


def mae_vit_tiny_patch4_32(**kwargs: Any) -> MaskedAutoencoder:
    """ViT-Tiny on 32x32 images with 4x4 patches (64 patches), e.g. CIFAR-10."""
    return _build(dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, **SMALL_IMAGE_DECODER), kwargs)


def mae_vit_tiny_patch2_32(**kwargs: Any) -> MaskedAutoencoder:
    """ViT-Tiny on 32x32 images with 2x2 patches (256 patches), the strongest small-scale setting."""
    return _build(dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, **SMALL_IMAGE_DECODER), kwargs)


# The official file's names, so code written against models_mae keeps working.
mae_vit_base_patch16_dec512d8b = mae_vit_base_patch16
mae_vit_large_patch16_dec512d8b = mae_vit_large_patch16
mae_vit_huge_patch14_dec512d8b = mae_vit_huge_patch14
