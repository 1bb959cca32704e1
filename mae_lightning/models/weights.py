"""Weights in: official facebookresearch/mae files, timm files and this project's checkpoints.

One function does the job, :func:`load_weights`; the classifiers and the pretraining module
call it alike. It reads any of

- an official pretrained encoder file, ``{"model": state_dict}`` with the encoder keys only
  (``mae_pretrain_vit_base.pth``);
- an official ``*_full.pth`` with the decoder (``mae_visualize_vit_base.pth`` and the like);
- an official fine-tuned file with a classification head (``head.weight``, ``fc_norm.*``);
- a Lightning checkpoint of this project (``{"state_dict": {"model.<key>": ...}}``), a bare
  state dict, or a ``.safetensors`` file (e.g. one written by :mod:`mae_lightning.export`);

always with ``torch.load(..., weights_only=True)``, so a downloaded file cannot run code. Keys
are the timm / official names on both sides, so nothing is renamed. Position tables follow the
model they are loaded into: a fixed 2-D sin-cos table is recomputed for the new patch grid, a
learned one (fine-tuned models) is resized with bicubic interpolation, as the official
``util/pos_embed.interpolate_pos_embed``. Shape mismatches fail with the key names; missing and
unexpected keys come back in one :class:`LoadReport`.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mae_lightning.ops import sincos_2d

# Wrappers that put a prefix before every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Lists up to this long are printed in full; longer ones per top-level name ("blocks.* (144 tensors)").
_LIST_IN_FULL = 4


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into (shapes, or keys under ``strict``)."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        source: where the weights came from.
        target: class name of the module loaded into.
        loaded: keys copied into the module.
        missing: keys of the module that the file lacks (left as initialised).
        unexpected: keys of the file that the module lacks (ignored).
        resized: position tables adapted to the module's patch grid, key -> how.
        expected_missing: patterns (fnmatch) of missing keys that are part of the plan.
        expected_unexpected: patterns of unexpected keys that are part of the plan.
    """

    source: str
    target: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    resized: dict[str, str] = field(default_factory=dict)
    expected_missing: tuple[str, ...] = ()
    expected_unexpected: tuple[str, ...] = ()

    @property
    def surprising_missing(self) -> list[str]:
        """Missing keys that no ``expected_missing`` pattern covers."""
        return [k for k in self.missing if not _matches(k, self.expected_missing)]

    @property
    def surprising_unexpected(self) -> list[str]:
        """Unexpected keys that no ``expected_unexpected`` pattern covers."""
        return [k for k in self.unexpected if not _matches(k, self.expected_unexpected)]

    @property
    def clean(self) -> bool:
        """True when every missing and unexpected key was expected."""
        return not self.surprising_missing and not self.surprising_unexpected

    def message(self) -> str:
        """The whole load in one message: counts, missing, unexpected and resized keys."""
        total = len(self.loaded) + len(self.missing)
        parts = [f"loaded {len(self.loaded)}/{total} tensors of {self.target} from {self.source}"]
        if self.missing:
            parts.append(f"missing in the file (left as initialised): {summarize_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in the file (ignored): {summarize_keys(self.unexpected)}")
        for key, how in self.resized.items():
            parts.append(f"{key}: {how}")
        return "; ".join(parts)


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


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


# --------------------------------------------------------------------------- reading files


def load_file(path: str | os.PathLike) -> object:
    """The content of a weights or checkpoint file, read without running pickled code.

    ``.safetensors`` with safetensors; anything else with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        return load_safetensors(str(path), device="cpu")
    try:
        # The official training scripts store their argparse.Namespace beside the weights;
        # it only holds plain values, so it is the one class allowed besides tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
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


# --------------------------------------------------------------------------- position tables


def resize_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a learned position table, the official ``interpolate_pos_embed``.

    The leading (cls) tokens are kept as they are; the patch part is viewed as an image of the
    old grid, resized with ``F.interpolate(mode="bicubic", align_corners=False)`` and flattened back.

    pos_embed: (1, P + gh*gw, D) -> (1, P + new_gh*new_gw, D), P the number of leading tokens.
    """
    num_patches = old_grid[0] * old_grid[1]
    num_prefix = pos_embed.shape[1] - num_patches
    if num_prefix < 0:
        raise WeightsMismatchError(f"a table of {pos_embed.shape[1]} tokens cannot hold a {old_grid} grid")
    dim = pos_embed.shape[-1]
    prefix_tokens, patch_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    patch_tokens = patch_tokens.reshape(-1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_tokens = F.interpolate(patch_tokens, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_tokens = patch_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([prefix_tokens, patch_tokens], dim=1)


def sincos_grid(table: Tensor, atol: float = 1e-5) -> tuple[int, int] | None:
    """The (gh, gw) grid whose fixed 2-D sin-cos table ``table`` (L, D) is, or None for a learned table."""
    length, dim = table.shape
    if dim % 4:
        return None
    for gh in range(1, length + 1):
        if length % gh == 0:
            candidate = sincos_2d(dim, (gh, length // gh))
            if torch.allclose(table.float(), candidate, atol=atol, rtol=0):
                return gh, length // gh
    return None


def adapt_position_tables(
    state_dict: dict[str, Tensor], module: nn.Module, grid: tuple[int, int] | None = None
) -> dict[str, str]:
    """Fit every ``*pos_embed`` of ``state_dict`` to the patch grid of ``module``, in place.

    A fixed sin-cos table is recomputed for the new grid (exact, whatever grid it was made for);
    a learned table is resized bicubically, from ``grid`` when given, else from the square grid its
    length implies. The leading (cls) rows are kept. Tables of another width are left for the
    shape check to report.

    Returns:
        key -> a sentence saying what was done, for the tables that changed.
    """
    targets = module.state_dict()
    changes: dict[str, str] = {}
    for key, table in list(state_dict.items()):
        if not key.endswith("pos_embed") or key not in targets or table.ndim != 3:
            continue
        target = targets[key]
        if target.ndim != 3 or target.shape[-1] != table.shape[-1]:
            continue
        new_grid = _module_grid(module, key, target.shape[1])
        if new_grid is None:
            continue
        num_prefix = target.shape[1] - new_grid[0] * new_grid[1]
        source_patches = table.shape[1] - num_prefix
        if source_patches <= 0:
            continue
        old_sincos = sincos_grid(table[0, num_prefix:])
        if old_sincos is not None:
            if old_sincos == tuple(new_grid) and table.shape == target.shape:
                continue
            fresh = sincos_2d(table.shape[-1], new_grid).to(table.dtype)[None]
            state_dict[key] = torch.cat([table[:, :num_prefix], fresh], dim=1)
            changes[key] = f"sin-cos table recomputed for the {_fmt(new_grid)} grid (was {_fmt(old_sincos)})"
            continue
        if table.shape == target.shape:
            continue
        old_grid = tuple(grid) if grid is not None else _square(source_patches)
        if old_grid is None or old_grid[0] * old_grid[1] != source_patches:
            raise WeightsMismatchError(
                f"{key}: the file's learned table has {source_patches} patch positions, which is no square grid; "
                f"pass the grid it was trained on (pos_embed_grid=(rows, cols))"
            )
        state_dict[key] = resize_pos_embed(table, old_grid, new_grid)
        changes[key] = f"learned table resized bicubically from the {_fmt(old_grid)} grid to {_fmt(new_grid)}"
    return changes


def _module_grid(module: nn.Module, key: str, length: int) -> tuple[int, int] | None:
    # The table's owner has a timm-style `patch_embed` with `grid_size` (this project's and timm's do).
    owner = key.rsplit(".", 1)[0] + "." if "." in key else ""
    try:
        patch_embed = module.get_submodule(owner + "patch_embed")
        grid = tuple(patch_embed.grid_size)
        if len(grid) == 2:
            return grid
    except AttributeError:
        pass
    # No patch embedding next to it: a square grid with one cls token is the only safe reading.
    return _square(length - 1)


def _square(length: int) -> tuple[int, int] | None:
    side = math.isqrt(max(length, 0))
    return (side, side) if side * side == length and side > 0 else None


def _fmt(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


# --------------------------------------------------------------------------- loading


def load_weights(
    module: nn.Module,
    source: str | os.PathLike | Mapping,
    *,
    prefix: str | None = None,
    strict: bool = False,
    expected_missing: Iterable[str] = (),
    expected_unexpected: Iterable[str] = (),
    pos_embed_grid: tuple[int, int] | None = None,
) -> LoadReport:
    """Load a weights file into a module with timm / official key names.

    Position tables are adapted to the module's patch grid first (see :func:`adapt_position_tables`).
    Every key present on both sides must then have the same shape, or a :class:`WeightsMismatchError`
    lists all that differ; nothing is copied in that case.

    Args:
        module: the model (a :class:`~mae_lightning.models.MaskedAutoencoder`, a timm ViT, a classifier).
        source: a file path or a loaded mapping (see :func:`read_state_dict`).
        prefix: only the file's keys under this prefix, stripped (see :func:`read_state_dict`).
        strict: raise when a missing or unexpected key is not covered by the expected patterns.
        expected_missing: fnmatch patterns of module keys the file may lack (``"decoder*"``).
        expected_unexpected: fnmatch patterns of file keys the module may lack (``"head.*"``).
        pos_embed_grid: the patch grid a learned, non-square position table was trained on.

    Returns:
        The :class:`LoadReport`; its ``message()`` says everything in one line.
    """
    name = str(source) if not isinstance(source, Mapping) else "a state dict"
    state_dict = read_state_dict(source, prefix=prefix)
    resized = adapt_position_tables(state_dict, module, pos_embed_grid)

    targets = module.state_dict()
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(targets[key].shape)}"
        for key, value in state_dict.items()
        if key in targets and value.shape != targets[key].shape
    ]
    if mismatched:
        raise WeightsMismatchError(
            f"{name} does not fit {type(module).__name__}: {len(mismatched)} shape mismatch(es): "
            + "; ".join(mismatched)
        )
    loaded = [key for key in targets if key in state_dict]
    if not loaded:
        raise WeightsMismatchError(
            f"{name} shares no key with {type(module).__name__}: the file has {summarize_keys(state_dict)}, "
            f"the model {summarize_keys(targets)}"
        )
    module.load_state_dict({key: state_dict[key] for key in loaded}, strict=False)
    report = LoadReport(
        source=name,
        target=type(module).__name__,
        loaded=loaded,
        missing=[key for key in targets if key not in state_dict],
        unexpected=[key for key in state_dict if key not in targets],
        resized=resized,
        expected_missing=tuple(expected_missing),
        expected_unexpected=tuple(expected_unexpected),
    )
    if strict and not report.clean:
        raise WeightsMismatchError(report.message())
    return report


# timm's ViT names for the paper's sizes: (embed_dim, depth) -> (name stem, num_heads).
TIMM_SIZES = {
    (192, 12): ("vit_tiny", 3),
    (384, 12): ("vit_small", 6),
    (768, 12): ("vit_base", 12),
    (1024, 24): ("vit_large", 16),
    (1280, 32): ("vit_huge", 16),
}


def describe_encoder(encoder: Mapping[str, Tensor], num_heads: int | None = None) -> dict:
    """The timm ``VisionTransformer`` arguments that this encoder's tensors imply.

    ``num_heads`` cannot be read from the weights; it comes from the checkpoint's hyperparameters when
    known, else from timm's size of the same width and depth.
    """
    embed_dim, in_chans, patch_size, _ = encoder["patch_embed.proj.weight"].shape
    depth = 1 + max(int(key.split(".")[1]) for key in encoder if key.startswith("blocks."))
    table = encoder["pos_embed"][0, 1:]
    # A sin-cos table knows its grid; a learned one is taken as square.
    grid = sincos_grid(table) or (round(table.shape[0] ** 0.5),) * 2
    stem, default_heads = TIMM_SIZES.get((embed_dim, depth), (None, None))
    info = {
        "img_size": [grid[0] * patch_size, grid[1] * patch_size],
        "patch_size": patch_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads or default_heads,
        "mlp_ratio": encoder["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if stem and info["img_size"][0] == info["img_size"][1]:
        info["timm_model"] = f"{stem}_patch{patch_size}_{info['img_size'][0]}"
    return info


def num_heads_from_hparams(checkpoint: object) -> int | None:
    """The ``num_heads`` a checkpoint written through the CLI records (None when it records none)."""
    # A checkpoint written through the CLI records the model's init_args; a module built in Python does not.
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    model = hparams.get("model") if isinstance(hparams, Mapping) else None
    if isinstance(model, Mapping) and isinstance(model.get("init_args"), Mapping):
        return model["init_args"].get("num_heads")
    return None


# The encoder's size, as a classifier built on a checkpoint's encoder takes it.
ARCHITECTURE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def checkpoint_architecture(path: str | os.PathLike) -> dict:
    """The encoder size of a checkpoint: ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``.

    Read from the tensors of this project's checkpoints (pretraining or classifier) and of official or
    timm files; ``num_heads``, which tensors do not show, from the hyperparameters of a checkpoint
    written through the CLI, else from the paper's size of the same width and depth.

    Raises:
        WeightsMismatchError (a ValueError): no ViT encoder in the file, or ``num_heads`` cannot be known.
    """
    checkpoint = load_file(path)
    lightning = isinstance(checkpoint, Mapping) and "state_dict" in checkpoint
    state = read_state_dict(checkpoint, prefix="model." if lightning else None)
    if "patch_embed.proj.weight" not in state or not any(key.startswith("blocks.") for key in state):
        raise WeightsMismatchError(f"{str(path)!r} holds no ViT encoder (patch_embed.proj.weight, blocks.*)")
    info = describe_encoder(state, num_heads_from_hparams(checkpoint))
    if info["num_heads"] is None:
        raise WeightsMismatchError(
            f"{str(path)!r} does not record the attention heads of its {info['embed_dim']}-wide, {info['depth']}-block "
            "encoder: state num_heads in the model"
        )
    return {key: info[key] for key in ARCHITECTURE_KEYS}
