"""Weights out: write a trained encoder as a timm ``VisionTransformer`` state dict.

    python -m mae_lightning.export runs/.../checkpoints/last.ckpt vit_encoder.safetensors

(``--help`` lists the settings; ``--include_head true`` keeps a fine-tuned classifier's head; settings may come
from a YAML file with ``--config``, as in the main command line.)

The source is a checkpoint of this project (pretraining or, with ``--prefix``, any module holding
the encoder), an official facebookresearch/mae file or a bare state dict. The keys are already
timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``), so the
export keeps the encoder's tensors and drops the decoder; the file loads with ``strict=True`` into

    timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="token")

(cls-token features, as ``MaskedAutoencoder.embed(pool="cls")``); ``global_pool="avg", fc_norm=False``
gives the mean of the normalised patch tokens, as ``embed(pool="mean")``. Sizes other than the
named timm models: ``timm.models.VisionTransformer(img_size=..., patch_size=..., in_chans=...,
embed_dim=..., depth=..., num_heads=..., num_classes=0)``; the command prints the arguments.
``.safetensors`` is written with safetensors, any other suffix with ``torch.save``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from jsonargparse import auto_cli
from torch import Tensor

from mae_lightning.checkpoint import (
    ENCODER_KEYS,
    HEAD_KEYS,
    Checkpoint,
    WeightsMismatchError,
    part,
    read_checkpoint,
    read_state_dict,
)
from mae_lightning.models.presets import describe_encoder


def exported_tensors(state_dict: Mapping[str, Tensor], include_head: bool = False) -> dict[str, Tensor]:
    """The encoder's tensors under timm's keys (contiguous copies), optionally with ``fc_norm``/``head``.

    Everything else (decoder, mask token) stays behind.
    """
    prefixes = ENCODER_KEYS + (HEAD_KEYS if include_head else ())
    encoder = {key: value.detach().contiguous().clone() for key, value in part(state_dict, prefixes).items()}
    needed = ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight")
    absent = [key for key in needed if key not in encoder]
    if absent:
        raise WeightsMismatchError(
            f"no ViT encoder found: {', '.join(absent)} missing (keys found: {', '.join(list(state_dict)[:8])}, ...); "
            "pass --prefix to pick the encoder inside a larger module"
        )
    return encoder


def export_encoder(
    source: str | os.PathLike | Mapping,
    out: str | os.PathLike,
    prefix: str | None = None,
    include_head: bool = False,
) -> dict:
    """Write the encoder of ``source`` to ``out`` (``.safetensors`` or a ``torch.save`` file).

    Args:
        source: a checkpoint or weights file, or a loaded state dict (see ``read_state_dict``).
        out: the file to write; its suffix picks the format.
        prefix: the key prefix of the encoder inside ``source`` (default: found automatically).
        include_head: keep ``fc_norm`` and ``head`` (a fine-tuned classifier) as well.

    Returns:
        The timm ``VisionTransformer`` arguments of the encoder (see :func:`describe_encoder`).
    """
    checkpoint = Checkpoint(Path("<state dict>"), source) if isinstance(source, Mapping) else read_checkpoint(source)
    encoder = exported_tensors(read_state_dict(checkpoint.contents, prefix=prefix), include_head)
    info = describe_encoder(encoder, checkpoint.model_args.get("num_heads"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(encoder, str(out), metadata={"format": "pt", "timm_vit_args": json.dumps(info)})
    else:
        torch.save(encoder, out)
    return info


def export(ckpt: str, out: str, prefix: str | None = None, include_head: bool = False) -> None:
    """Export a trained MAE encoder as a timm VisionTransformer state dict, and print how timm builds it.

    Args:
        ckpt: checkpoint of this project, official MAE file or state dict.
        out: output file: .safetensors, or .pth for torch.save.
        prefix: key prefix of the encoder in ckpt (default: automatic).
        include_head: also export fc_norm and head (a fine-tuned classifier).
    """
    info = export_encoder(ckpt, out, prefix=prefix, include_head=include_head)
    print(f"wrote {out}")
    arch = {k: v for k, v in info.items() if k != "timm_model"}
    print("timm.models.VisionTransformer(" + ", ".join(f"{k}={v!r}" for k, v in arch.items()) + ", num_classes=0)")
    if "timm_model" in info:
        print(f'or timm.create_model("{info["timm_model"]}", pretrained=False, num_classes=0, global_pool="token")')


def main(argv: list[str] | None = None) -> None:
    """``python -m mae_lightning.export <checkpoint> <out>``: the command language of the main CLI (jsonargparse)."""
    try:
        auto_cli(export, args=argv, prog="python -m mae_lightning.export")
    except (FileNotFoundError, ValueError) as err:
        print(f"mae_lightning.export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
