"""Weights to and from Hugging Face transformers: ``ViTMAEForPreTraining``, ``ViTModel``, ``ViTForImageClassification``.

One key map, :data:`LAYER_NAMES` / :data:`MODEL_NAMES`, between this project's timm / official names and the names
in transformers' files, used in both directions: :func:`to_transformers` (export) and :func:`from_transformers`
(reading a transformers folder or a Hub snapshot, e.g. ``facebook/vit-mae-base``). The differences it covers:

- transformers splits each attention input projection in three (``attention.attention.query/key/value``, each
  (D, D)); here it is one fused ``blocks.N.attn.qkv`` (3D, D), q, k and v stacked in that order;
- every layer has another name (``encoder.layer.N.layernorm_before`` = ``blocks.N.norm1``, ...); the encoder sits
  under ``vit.`` in ``ViTMAEForPreTraining`` and ``ViTForImageClassification`` and at the top in ``ViTModel``;
- the decoder lives apart, under ``decoder.`` (``decoder.decoder_layers.N`` = ``decoder_blocks.N``);
- position tables are ``embeddings.position_embeddings`` and ``decoder.decoder_pos_embed``, cls row first, as here.

Files are written in the layout of the ``facebook/vit-mae-*`` repositories (every transformers release reads it);
the newer in-memory names of transformers 5 (``layers.N.attention.q_proj``, ``mlp.fc1``) and what its
``save_pretrained`` writes are read as well. The sizes go through :func:`config_to_model_args` and
:func:`transformers_config`; the encoder's sizes are read from its tensors by
:func:`~mae_lightning.models.presets.describe_encoder`, declared nowhere else.

Nothing here imports ``transformers``: reading and writing need only ``safetensors`` and ``json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# The ``model_type`` of the configs this module reads and writes.
MAE_TYPE = "vit_mae"
VIT_TYPE = "vit"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The weights files of a transformers folder, in the order they are read: older Hub repositories have only the
# PyTorch one (read with ``torch.load(weights_only=True)``, so it cannot run code).
WEIGHTS_FILES = (WEIGHTS_FILE, "pytorch_model.bin")
# LayerNorm epsilon of every norm here (models/vit.py), written into exported configs.
LAYER_NORM_EPS = 1e-6

# One transformer block: transformers' name -> this project's (after ``<stack>.N.``); q, k, v are handled apart.
LAYER_NAMES = {
    "layernorm_before.": "norm1.",
    "attention.output.dense.": "attn.proj.",
    "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
# transformers' split attention inputs, in the order they are stacked in ``attn.qkv``.
QKV_NAMES = ("attention.attention.query.", "attention.attention.key.", "attention.attention.value.")
# The stacks of blocks: transformers' prefix -> this project's (``{enc}`` is the encoder's prefix, ``vit.`` or "").
STACK_NAMES = {"{enc}encoder.layer.": "blocks.", "decoder.decoder_layers.": "decoder_blocks."}
# Everything outside the blocks: transformers' name (or name prefix, ending in ".") -> this project's.
MODEL_NAMES = {
    "{enc}embeddings.cls_token": "cls_token",
    "{enc}embeddings.position_embeddings": "pos_embed",
    "{enc}embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "{enc}layernorm.": "norm.",
    "decoder.decoder_embed.": "decoder_embed.",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.": "decoder_norm.",
    "decoder.decoder_pred.": "decoder_pred.",
    "classifier.": "head.",
}
# transformers 5's in-memory names (and what its save_pretrained writes for the MAE decoder) -> the file layout.
_NEWER_NAMES = (
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
# The architectures this module writes.
ARCHITECTURES = ("ViTMAEForPreTraining", "ViTModel", "ViTForImageClassification")


def _encoder_prefix(architecture: str) -> str:
    return "" if architecture == "ViTModel" else "vit."


def to_transformers(state_dict: Mapping[str, Tensor], architecture: str) -> dict[str, Tensor]:
    """This project's tensors under transformers' names for ``architecture`` (one of :data:`ARCHITECTURES`).

    ``blocks.N.attn.qkv`` (3D, D) / (3D,) becomes three (D, D) / (D,) tensors; every other tensor keeps its shape.
    Keys outside the map (a linear probe's BatchNorm, ``fc_norm``) raise: the caller picks what to write.

    Raises:
        ValueError: a key that transformers' ``architecture`` has no place for.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    enc = _encoder_prefix(architecture)
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        value = value.detach().contiguous()
        block = _split_block_key(key, {ours: theirs.format(enc=enc) for theirs, ours in STACK_NAMES.items()})
        if block is not None:
            stack, index, rest = block
            if rest.startswith("attn.qkv."):
                for name, chunk in zip(QKV_NAMES, value.chunk(3, dim=0), strict=True):
                    out[f"{stack}{index}.{name}{rest.removeprefix('attn.qkv.')}"] = chunk.clone()
                continue
            theirs = _rename_prefix(rest, {ours: theirs for theirs, ours in LAYER_NAMES.items()})
            if theirs is not None:
                out[f"{stack}{index}.{theirs}"] = value.clone()
                continue
        else:
            theirs = _rename_prefix(key, {ours: theirs.format(enc=enc) for theirs, ours in MODEL_NAMES.items()})
            if theirs is not None:
                out[theirs] = value.clone()
                continue
        unmapped.append(key)
    if unmapped:
        raise ValueError(f"transformers' {architecture} has no place for {', '.join(unmapped)}")
    return out


def from_transformers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers ViTMAE / ViT state dict under this project's (timm / official) names.

    Reads the files of the Hub (``vit.encoder.layer.N.attention.attention.query``, ...), what transformers 5 writes,
    and its in-memory names. q, k and v are stacked into ``blocks.N.attn.qkv`` (3D, D). A ``ViTModel``'s
    ``pooler`` (dense + tanh over the cls token, which this project does not have) is left out.

    Raises:
        ValueError: keys that the map does not know, or a block with some of q, k, v only.
    """
    keys = {_older_name(key): value for key, value in state_dict.items()}
    enc = "vit." if any(key.startswith("vit.") for key in keys) else ""
    out: dict[str, Tensor] = {}
    qkv: dict[str, list[Tensor | None]] = {}
    unmapped = []
    for key, value in keys.items():
        if key.startswith("pooler."):
            continue
        block = _split_block_key(key, {theirs.format(enc=enc): ours for theirs, ours in STACK_NAMES.items()})
        if block is not None:
            stack, index, rest = block
            for position, name in enumerate(QKV_NAMES):
                if rest.startswith(name):
                    slots = qkv.setdefault(f"{stack}{index}.attn.qkv.{rest.removeprefix(name)}", [None] * 3)
                    slots[position] = value
                    break
            else:
                ours = _rename_prefix(rest, LAYER_NAMES)
                if ours is None:
                    unmapped.append(key)
                else:
                    out[f"{stack}{index}.{ours}"] = value
            continue
        ours = _rename_prefix(key, {theirs.format(enc=enc): ours for theirs, ours in MODEL_NAMES.items()})
        if ours is None:
            unmapped.append(key)
        else:
            out[ours] = value
    for key, parts in qkv.items():
        if any(part is None for part in parts):
            raise ValueError(f"{key}: the file has only some of query, key and value")
        out[key] = torch.cat(parts, dim=0)
    if unmapped:
        raise ValueError(f"not a transformers ViTMAE / ViT state dict: unknown keys {', '.join(unmapped[:8])}")
    return out


def _older_name(key: str) -> str:
    for pattern, replacement in _NEWER_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _split_block_key(key: str, stacks: Mapping[str, str]) -> tuple[str, int, str] | None:
    """``blocks.3.norm1.weight`` -> (the other side's stack prefix, 3, ``norm1.weight``); None outside a stack."""
    for source, target in stacks.items():
        if key.startswith(source):
            index, _, rest = key[len(source) :].partition(".")
            if index.isdigit():
                return target, int(index), rest
    return None


def _rename_prefix(key: str, names: Mapping[str, str]) -> str | None:
    """``key`` with its name (exact) or name prefix (ending in ".") replaced; None when no entry matches."""
    for source, target in names.items():
        if key == source or (source.endswith(".") and key.startswith(source)):
            return target + key[len(source) :]
    return None


# ---------------------------------------------------------------------------- configs
def config_to_model_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model arguments of a transformers ``config.json``: :class:`MaskedAutoencoder`'s for ``vit_mae``.

    ``vit`` configs give the encoder's arguments (those of :class:`VisionTransformer`, ``num_classes`` from the
    labels when the architecture is a classifier, ``global_pool=False``: transformers classifies the cls token).
    A non-square ``image_size`` is kept as (height, width).

    Raises:
        ValueError: another ``model_type``, or a config whose layers this project does not have (no q/k/v bias,
            an activation other than exact GELU, decoder and encoder of different MLP ratios).
    """
    model_type = config.get("model_type")
    if model_type not in (MAE_TYPE, VIT_TYPE):
        raise ValueError(f"transformers model_type {model_type!r} is not ViTMAE ({MAE_TYPE!r}) or ViT ({VIT_TYPE!r})")
    if not config.get("qkv_bias", True) or config.get("hidden_act", "gelu") != "gelu":
        raise ValueError("only ViTs with q/k/v biases and exact GELU (hidden_act 'gelu') are this project's layers")
    image_size = config.get("image_size", 224)
    args: dict[str, Any] = {
        "img_size": image_size if isinstance(image_size, int) else tuple(image_size),
        "patch_size": config.get("patch_size", 16),
        "in_chans": config.get("num_channels", 3),
        "embed_dim": config["hidden_size"],
        "depth": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "mlp_ratio": config["intermediate_size"] / config["hidden_size"],
    }
    if model_type == MAE_TYPE:
        decoder_ratio = config["decoder_intermediate_size"] / config["decoder_hidden_size"]
        if decoder_ratio != args["mlp_ratio"]:
            raise ValueError(
                f"the decoder's MLP ratio {decoder_ratio} differs from the encoder's {args['mlp_ratio']}: "
                "MaskedAutoencoder has one mlp_ratio"
            )
        args |= {
            "decoder_embed_dim": config["decoder_hidden_size"],
            "decoder_depth": config["decoder_num_hidden_layers"],
            "decoder_num_heads": config["decoder_num_attention_heads"],
            "norm_pix_loss": bool(config.get("norm_pix_loss", False)),
        }
    elif "ViTForImageClassification" in (config.get("architectures") or []):
        args |= {"num_classes": len(config.get("id2label") or {}), "global_pool": False}
    return args


def transformers_config(
    encoder: Mapping[str, Any],
    architecture: str,
    decoder: Mapping[str, int] | None = None,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = False,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of an exported model.

    Args:
        encoder: the encoder's sizes, as :func:`~mae_lightning.models.presets.describe_encoder` returns them
            (``img_size`` (H, W), ``patch_size``, ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``,
            ``mlp_ratio``).
        architecture: one of :data:`ARCHITECTURES`.
        decoder: ``decoder_embed_dim``, ``decoder_depth``, ``decoder_num_heads`` (``ViTMAEForPreTraining`` only).
        mask_ratio: the pretraining's share of removed patches (``ViTMAEForPreTraining``).
        norm_pix_loss: whether the decoder regresses per-patch normalised pixels (``ViTMAEForPreTraining``).
        labels: class names of a classifier's outputs, in order (``ViTForImageClassification``).
    """
    height, width = encoder["img_size"]
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": MAE_TYPE if architecture == "ViTMAEForPreTraining" else VIT_TYPE,
        "image_size": height if height == width else [height, width],
        "patch_size": encoder["patch_size"],
        "num_channels": encoder["in_chans"],
        "hidden_size": encoder["embed_dim"],
        "num_hidden_layers": encoder["depth"],
        "num_attention_heads": encoder["num_heads"],
        "intermediate_size": int(encoder["embed_dim"] * encoder["mlp_ratio"]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": LAYER_NORM_EPS,
        "qkv_bias": True,
        "initializer_range": 0.02,
        "dtype": "float32",
    }
    if architecture == "ViTMAEForPreTraining":
        if decoder is None:
            raise ValueError("ViTMAEForPreTraining needs the decoder's sizes")
        config |= {
            "decoder_hidden_size": decoder["decoder_embed_dim"],
            "decoder_num_hidden_layers": decoder["decoder_depth"],
            "decoder_num_attention_heads": decoder["decoder_num_heads"],
            "decoder_intermediate_size": int(decoder["decoder_embed_dim"] * encoder["mlp_ratio"]),
            "mask_ratio": mask_ratio,
            "norm_pix_loss": norm_pix_loss,
        }
    if architecture == "ViTForImageClassification":
        if not labels:
            raise ValueError("ViTForImageClassification needs the names (or the number) of its classes")
        config |= {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    return config


def decoder_sizes(state_dict: Mapping[str, Tensor], decoder_num_heads: int | None) -> dict[str, int]:
    """The decoder's width and depth as its tensors show them, and its heads (which they cannot show).

    ``decoder_num_heads`` None: the paper's 16 for its 512-wide decoder, else a ValueError asking for it.
    """
    width = state_dict["decoder_embed.weight"].shape[0]
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("decoder_blocks."))
    if decoder_num_heads is None:
        from mae_lightning.models.presets import PAPER_DECODER

        if width != PAPER_DECODER["decoder_embed_dim"]:
            raise ValueError(f"the {width}-wide decoder's attention heads are not recorded: state decoder_num_heads")
        decoder_num_heads = PAPER_DECODER["decoder_num_heads"]
    return {"decoder_embed_dim": width, "decoder_depth": depth, "decoder_num_heads": decoder_num_heads}


# ---------------------------------------------------------------------------- folders
def weights_file_in(folder: Path) -> Path | None:
    """The weights file of a transformers folder (:data:`WEIGHTS_FILES`, the first present), or None."""
    return next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)


def transformers_folder_of(path: str | os.PathLike) -> Path | None:
    """The transformers folder that ``path`` is (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)
    or whose weights file it is; None for anything else (an official ``.pth``, a timm ``.safetensors``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name in WEIGHTS_FILES else None
    if folder is None or not (folder / CONFIG_FILE).is_file() or weights_file_in(folder) is None:
        return None
    try:
        model_type = json.loads((folder / CONFIG_FILE).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if model_type in (MAE_TYPE, VIT_TYPE) else None


def read_transformers_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """A transformers folder as a checkpoint's contents: ``{"model": state dict (this project's keys),
    "transformers_config": config.json}``, the weights read from ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        ValueError: the folder is not a readable ViTMAE / ViT folder.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    weights = weights_file_in(folder)
    try:
        config_to_model_args(config)
        if weights is None:
            raise ValueError(f"no {' or '.join(WEIGHTS_FILES)}")
        if weights.suffix == ".safetensors":
            tensors = load_file(str(weights), device="cpu")
        else:
            tensors = torch.load(weights, map_location="cpu", weights_only=True)
        state_dict = from_transformers(tensors)
    except (KeyError, ValueError) as err:
        raise ValueError(f"cannot read {folder} as a transformers ViTMAE / ViT folder: {err}") from None
    return {"model": state_dict, "transformers_config": config}


def write_transformers_folder(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any], folder: str | os.PathLike
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (this project's tensors under transformers' names) into
    ``folder``, which ``<architecture>.from_pretrained(folder)`` loads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = to_transformers(state_dict, config["architectures"][0])
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
