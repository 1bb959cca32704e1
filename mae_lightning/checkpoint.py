"""One reader for every weights file: this project's checkpoints, official facebookresearch/mae files, timm files,
Hugging Face transformers folders.

:func:`read_checkpoint` opens a file once, never running pickled code (``torch.load(weights_only=True)``, or
safetensors), and returns a :class:`Checkpoint`: the model's tensors under bare timm / official keys, the
hyperparameters the command line recorded, the DataModule's stored state and the callbacks' states. Loading
(``models/weights.py``), the classifiers, export, the command line and the data statistics all read through it.

The key sets of a model's parts are declared here once: :data:`ENCODER_KEYS` (timm's ``VisionTransformer`` names,
shared by the MAE encoder and the classifiers), :data:`DECODER_KEYS` (the MAE decoder and mask token) and
:data:`HEAD_KEYS` (a classifier's pooling norm and head).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Key prefixes of each part of a state dict.
ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
DECODER_KEYS = ("decoder_", "mask_token")
HEAD_KEYS = ("fc_norm.", "head.")
# Wrappers that put a prefix before every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Lists up to this long are printed in full; longer ones per top-level name ("blocks.* (144 tensors)").
_LIST_IN_FULL = 4
# The entries of a DataModule's stored state (``MAEDataModule.state_dict``).
_DATA_STATE_KEYS = {"seed", "epoch", "batches_done"}


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into (shapes, or keys under ``strict``), or holds none."""


def part(state_dict: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """The entries of ``state_dict`` whose keys start with one of ``prefixes`` (e.g. :data:`ENCODER_KEYS`)."""
    prefixes = tuple(prefixes)
    return {key: value for key, value in state_dict.items() if key.startswith(prefixes)}


def summarize_keys(keys: Iterable[str]) -> str:
    """``a.x, a.y, blocks.* (144 tensors)``: short groups in full, long ones by their first name."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    shown = []
    for head, members in groups.items():
        if len(members) <= _LIST_IN_FULL:
            shown.extend(members)
        else:
            shown.append(f"{head}.* ({len(members)} tensors)")
    return ", ".join(shown)


def load_file(path: str | os.PathLike, mmap: bool = False) -> object:
    """The content of a weights or checkpoint file, read without running pickled code.

    ``.safetensors`` with safetensors; anything else with ``torch.load(weights_only=True)`` (``mmap``: tensors
    stay on disk until used, so reading the hyperparameters of a large file costs little). A Hugging Face
    transformers folder (``config.json`` + ``model.safetensors`` of a ViTMAE or ViT), or its ``model.safetensors``,
    gives ``{"model": <tensors under this project's keys>, "transformers_config": <config.json>}``
    (``models/transformers_io.py``).
    """
    from mae_lightning.models.transformers_io import read_transformers_folder, transformers_folder_of

    path = Path(path)
    folder = transformers_folder_of(path)
    if folder is not None:
        return read_transformers_folder(folder)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        return load_safetensors(str(path), device="cpu")
    try:
        # The official training scripts store their argparse.Namespace beside the weights;
        # it only holds plain values, so it is the one class allowed besides tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle errors come in many classes; say what happened and why
        raise ValueError(
            f"cannot read {path} as a weights file with torch.load(weights_only=True) "
            f"(files that need arbitrary code to unpickle are refused): {err}"
        ) from err


def read_state_dict(source: str | os.PathLike | Mapping, prefix: str | None = None) -> dict[str, Tensor]:
    """The tensors of a weights file (or of an already loaded object), with bare timm/official keys.

    Args:
        source: path of a ``.pth``/``.pt``/``.ckpt``/``.bin`` file (read with ``weights_only=True``) or a
            ``.safetensors`` file; or a loaded mapping. ``{"model": ...}`` (official), ``{"state_dict": ...}``
            (Lightning) and ``{"module": ...}`` wrappers are opened.
        prefix: keep only the keys under this prefix and strip it (``"model."`` picks the
            MaskedAutoencoder out of a pretraining checkpoint). By default, a prefix shared by every key
            of a Lightning checkpoint (the LightningModule's attribute, e.g. ``model.``) and the
            ``module.``/``_orig_mod.`` prefixes of DDP and torch.compile are stripped.
    """
    obj = source if isinstance(source, Mapping) else load_file(source)
    from_lightning = isinstance(obj, Mapping) and "state_dict" in obj and "pytorch-lightning_version" in obj
    state_dict = _unwrap(obj)
    if prefix is not None:
        picked = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not picked:
            raise WeightsMismatchError(
                f"no key starts with prefix {prefix!r}; the file's keys begin with {summarize_keys(state_dict)}"
            )
        return picked
    for wrapper in _WRAPPER_PREFIXES:
        state_dict = _strip_shared_prefix(state_dict, wrapper)
    if from_lightning:
        heads = {key.split(".", 1)[0] for key in state_dict}
        if len(heads) == 1 and all("." in key for key in state_dict):
            state_dict = _strip_shared_prefix(state_dict, heads.pop() + ".")
    return state_dict


def _unwrap(obj: object) -> dict[str, Tensor]:
    # Official files: {"model": sd, ...}; Lightning: {"state_dict": sd, ...}; DeepSpeed-style: {"module": sd}.
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        for name in ("model", "state_dict", "module"):
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
        else:
            raise WeightsMismatchError(
                f"no state dict found: expected tensors, or one under 'model', 'state_dict' or 'module'; "
                f"found the entries {sorted(map(str, obj))}"
            )
    if not isinstance(obj, Mapping):
        raise WeightsMismatchError(f"expected a mapping of tensors, got {type(obj).__name__}")
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _strip_shared_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


@dataclass(frozen=True)
class Checkpoint:
    """What a weights file holds, read once (see :func:`read_checkpoint`).

    Attributes:
        path: the file.
        contents: the loaded object, as stored.
    """

    path: Path
    contents: Any

    @property
    def is_lightning(self) -> bool:
        """A Lightning checkpoint of this project's modules: the model under ``state_dict`` as ``model.<key>``."""
        return isinstance(self.contents, Mapping) and "state_dict" in self.contents

    @cached_property
    def state_dict(self) -> dict[str, Tensor]:
        """The model's tensors with bare timm / official keys (a Lightning module's ``model.`` prefix stripped)."""
        return read_state_dict(self.contents, prefix="model." if self.is_lightning else None)

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters a Lightning checkpoint records (the resolved config under the CLI); {} otherwise."""
        hparams = self.contents.get("hyper_parameters") if isinstance(self.contents, Mapping) else None
        return dict(hparams) if isinstance(hparams, Mapping) else {}

    @property
    def model_args(self) -> dict[str, Any]:
        """The model's ``init_args`` as the command line recorded them ({} for a module built in Python); for a
        transformers folder, the arguments its ``config.json`` states."""
        if isinstance(self.contents, Mapping) and isinstance(self.contents.get("transformers_config"), Mapping):
            from mae_lightning.models.transformers_io import config_to_model_args

            return config_to_model_args(self.contents["transformers_config"])
        model = self.hparams.get("model")
        init_args = model.get("init_args") if isinstance(model, Mapping) else None
        return dict(init_args) if isinstance(init_args, Mapping) else {}

    @property
    def data_states(self) -> dict[str, dict]:
        """The DataModule states a Lightning checkpoint stores, by their key (the DataModule's class name)."""
        if not isinstance(self.contents, Mapping):
            return {}
        return {
            key: value
            for key, value in self.contents.items()
            if isinstance(value, Mapping) and value.keys() >= _DATA_STATE_KEYS
        }

    def callback_state(self, key: str) -> dict[str, Any]:
        """The state a callback stored under ``key`` ({} when none)."""
        callbacks = self.contents.get("callbacks") if isinstance(self.contents, Mapping) else None
        state = callbacks.get(key) if isinstance(callbacks, Mapping) else None
        return dict(state) if isinstance(state, Mapping) else {}


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Checkpoint:
    """Open a weights or checkpoint file once (see :class:`Checkpoint`).

    Args:
        path: the file: this project's ``.ckpt``, an official ``.pth``, a timm or exported ``.safetensors``, a bare
            state dict, or a Hugging Face transformers ViTMAE / ViT folder (or its ``model.safetensors``).
        mmap: leave the tensors on disk until they are used (for reading hyperparameters or states only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read safely (not a checkpoint, or pickled code).
    """
    return Checkpoint(Path(path), load_file(path, mmap=mmap))
