"""Plain PyTorch models: no Lightning in here."""

from mae_lightning.models.classifier import VisionTransformer, load_pretrained_encoder
from mae_lightning.models.mae import MaskedAutoencoder
from mae_lightning.models.presets import (
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_small_patch16,
    mae_vit_tiny_patch2_32,
    mae_vit_tiny_patch4_32,
    mae_vit_tiny_patch16,
)
from mae_lightning.models.segmenter import Segmenter

__all__ = [
    "MaskedAutoencoder",
    "Segmenter",
    "VisionTransformer",
    "load_pretrained_encoder",
    "mae_vit_base_patch16",
    "mae_vit_huge_patch14",
    "mae_vit_large_patch16",
    "mae_vit_small_patch16",
    "mae_vit_tiny_patch16",
    "mae_vit_tiny_patch2_32",
    "mae_vit_tiny_patch4_32",
]
