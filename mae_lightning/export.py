"""Weights out: write a trained encoder as a timm ``VisionTransformer`` state dict, or a model as a transformers folder.

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

An ``out`` without suffix (or ``--format transformers``) is a Hugging Face transformers folder instead
(:func:`export_transformers`): ``config.json``, ``model.safetensors`` under transformers' names
(``models/transformers_io.py``) and a model card ``README.md``; ``ViTMAEForPreTraining`` for encoder + decoder,
``ViTModel`` for an encoder, ``ViTForImageClassification`` with ``--include_head true``.
``--push_to_hub <owner>/<name>`` uploads that folder in one commit (``runtime/hub.py``):

    python -m mae_lightning.export runs/.../checkpoints/last.ckpt vit_mae_cifar --push_to_hub me/vit-mae-cifar
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import auto_cli
from torch import Tensor

from mae_lightning.checkpoint import (
    DECODER_KEYS,
    ENCODER_KEYS,
    HEAD_KEYS,
    Checkpoint,
    WeightsMismatchError,
    part,
    read_checkpoint,
    read_state_dict,
)
from mae_lightning.models.presets import describe_encoder

# The linear probe's BatchNorm1d epsilon (classify.LinearProbe, as the official main_linprobe.py).
PROBE_BATCHNORM_EPS = 1e-6


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


def export_transformers(
    source: str | os.PathLike | Mapping,
    out: str | os.PathLike,
    prefix: str | None = None,
    include_head: bool = False,
    labels: list[str] | None = None,
    repo_id: str | None = None,
    encoder_only: bool = False,
) -> dict:
    """Write ``source`` as a Hugging Face transformers folder: ``config.json``, ``model.safetensors``, ``README.md``.

    Which transformers class loads it follows from what the file holds:

    - encoder and decoder (a pretraining checkpoint, an official ``*_full.pth``): ``ViTMAEForPreTraining``, with
      the sizes, ``mask_ratio`` and ``norm_pix_loss`` of the run;
    - with ``include_head``, a classifier that classifies the cls token after ``norm`` (``global_pool=False``, or
      a linear probe, whose BatchNorm is folded into the head): ``ViTForImageClassification``;
    - otherwise, or with ``encoder_only``, the encoder: ``ViTModel`` (load it with ``add_pooling_layer=False``:
      this project has no pooler).

    transformers has no mean-pooled ``fc_norm``: a global-pool classifier's head is refused, and its encoder
    (which has no final ``norm``) too; export it to timm instead.

    Args:
        source: a checkpoint or weights file, or a loaded state dict.
        out: the folder to write.
        prefix: the key prefix of the model inside ``source`` (default: found automatically).
        include_head: export the classifier with its head.
        labels: class names of the head's outputs, in order (default ``LABEL_<i>``, as transformers).
        repo_id: the Hub repository the folder is meant for, named in the model card's load commands.
        encoder_only: write the encoder of a pretraining checkpoint as ``ViTModel`` (the decoder stays behind).

    Returns:
        The ``config.json`` written.

    Raises:
        WeightsMismatchError (a ValueError): the file holds nothing transformers' ViTs can load exactly.
    """
    from mae_lightning.model_card import model_card
    from mae_lightning.models.transformers_io import decoder_sizes, transformers_config, write_transformers_folder

    checkpoint = Checkpoint(Path("<state dict>"), source) if isinstance(source, Mapping) else read_checkpoint(source)
    state = read_state_dict(checkpoint.contents, prefix=prefix)
    args = {**_official_args(checkpoint), **checkpoint.model_args}
    encoder = exported_tensors(state)
    if "fc_norm.weight" in state or "norm.weight" not in state:
        raise WeightsMismatchError(
            "this classifier pools the mean patch token through fc_norm (global_pool), which transformers' ViT does "
            "not have (it classifies the cls token after its final norm): export it to timm (a .safetensors out)"
        )
    info = describe_encoder(encoder, args.get("num_heads"))
    if args.get("img_size") is not None:  # a learned table does not show a non-square grid; the config does
        size = args["img_size"]
        info["img_size"] = [size, size] if isinstance(size, int) else list(size)
    if info["num_heads"] is None:
        raise WeightsMismatchError(f"the attention heads of the {info['embed_dim']}-wide encoder are not recorded")
    if include_head:
        if "head.weight" not in state and "head.1.weight" not in state:
            raise WeightsMismatchError("--include_head: the file has no classification head (head.weight)")
        tensors = {**encoder, **_cls_token_head(state)}
        names = labels or [f"LABEL_{i}" for i in range(tensors["head.weight"].shape[0])]
        if len(names) != tensors["head.weight"].shape[0]:
            raise ValueError(f"--labels names {len(names)} classes, the head has {tensors['head.weight'].shape[0]}")
        config = transformers_config(info, "ViTForImageClassification", labels=names)
    elif "decoder_embed.weight" in state and not encoder_only:
        if args.get("decoder", "self") != "self":
            raise WeightsMismatchError(f"transformers' ViTMAE has the paper's decoder, not decoder={args['decoder']!r}")
        tensors = {**encoder, **part(state, DECODER_KEYS)}
        decoder = decoder_sizes(state, args.get("decoder_num_heads"))
        mask_ratio = checkpoint.hparams.get("mask_ratio", args.get("mask_ratio", 0.75))
        norm_pix = bool(args.get("norm_pix_loss", False))
        config = transformers_config(info, "ViTMAEForPreTraining", decoder, mask_ratio, norm_pix)
    else:
        tensors, config = encoder, transformers_config(info, "ViTModel")
    folder = write_transformers_folder(tensors, config, out)
    (folder / "README.md").write_text(model_card(checkpoint, config, repo_id))
    return config


def _official_args(checkpoint: Checkpoint) -> dict:
    """The settings an official ``*_full.pth`` stores (its training script's ``argparse.Namespace``)."""
    stored = checkpoint.contents.get("args") if isinstance(checkpoint.contents, Mapping) else None
    return dict(vars(stored)) if isinstance(stored, argparse.Namespace) else {}


def _cls_token_head(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The head as one linear layer on the cls token: ``head.weight`` (K, D) and ``head.bias`` (K,).

    A linear probe's ``head.0`` (BatchNorm1d without affine, in eval mode) and ``head.1`` (linear) are folded:
    ``W' = W / sqrt(var + eps)``, ``b' = b - W' @ mean``, the same map up to float rounding.
    """
    if "head.weight" in state:
        return {"head.weight": state["head.weight"].clone(), "head.bias": state["head.bias"].clone()}
    weight, bias = state["head.1.weight"].double(), state["head.1.bias"].double()
    mean, var = state["head.0.running_mean"].double(), state["head.0.running_var"].double()
    folded = weight / (var + PROBE_BATCHNORM_EPS).sqrt()
    dtype = state["head.1.weight"].dtype
    return {"head.weight": folded.to(dtype), "head.bias": (bias - folded @ mean).to(dtype)}


def export(
    ckpt: str,
    out: str,
    prefix: str | None = None,
    include_head: bool = False,
    format: Literal["timm", "transformers"] | None = None,
    labels: list[str] | None = None,
    encoder_only: bool = False,
    push_to_hub: str | None = None,
) -> None:
    """Export a trained MAE as a timm VisionTransformer state dict or a Hugging Face transformers folder.

    Args:
        ckpt: checkpoint of this project, official MAE file or state dict.
        out: output: a .safetensors or .pth file (timm), or a folder (transformers).
        prefix: key prefix of the encoder in ckpt (default: automatic).
        include_head: also export the classifier's head (timm: fc_norm and head; transformers:
            ViTForImageClassification).
        format: timm or transformers; default: transformers when out has no suffix, else timm.
        labels: class names of the head's outputs, in order (transformers' id2label).
        encoder_only: transformers: the encoder alone (ViTModel), without the MAE decoder.
        push_to_hub: upload the transformers folder to this Hub model repository (needs a token).
    """
    format = format or ("timm" if Path(out).suffix else "transformers")
    if push_to_hub and format != "transformers":
        raise ValueError("--push_to_hub uploads a transformers folder: give an out folder or --format transformers")
    if format == "transformers":
        from mae_lightning.runtime.hub import push_folder

        config = export_transformers(
            ckpt,
            out,
            prefix=prefix,
            include_head=include_head,
            labels=labels,
            repo_id=push_to_hub,
            encoder_only=encoder_only,
        )
        print(f"wrote {out} ({config['architectures'][0]})")
        if push_to_hub:
            print(
                f"pushed to https://huggingface.co/{push_to_hub}: {push_folder(Path(out), push_to_hub, _commit(ckpt))}"
            )
        return
    info = export_encoder(ckpt, out, prefix=prefix, include_head=include_head)
    print(f"wrote {out}")
    arch = {k: v for k, v in info.items() if k != "timm_model"}
    print("timm.models.VisionTransformer(" + ", ".join(f"{k}={v!r}" for k, v in arch.items()) + ", num_classes=0)")
    if "timm_model" in info:
        print(f'or timm.create_model("{info["timm_model"]}", pretrained=False, num_classes=0, global_pool="token")')


def _commit(ckpt: str) -> str:
    return f"Upload weights exported from {Path(ckpt).name} with mae_lightning"


def main(argv: list[str] | None = None) -> None:
    """``python -m mae_lightning.export <checkpoint> <out>``: the command language of the main CLI (jsonargparse)."""
    try:
        auto_cli(export, args=argv, prog="python -m mae_lightning.export")
    except (FileNotFoundError, ValueError) as err:
        print(f"mae_lightning.export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
