"""Weights in: load any weights file into a model by its timm / official key names, and say what was done.

One function does the job, :func:`load_weights`; the classifiers and the pretraining module call it alike. It
reads (through :func:`~mae_lightning.checkpoint.read_state_dict`) an official pretrained encoder file, an
official ``*_full.pth`` with the decoder, an official fine-tuned file with a head, a Lightning checkpoint of this
project, a bare state dict or a ``.safetensors`` file. Keys are the timm / official names on both sides, so nothing
is renamed. Position tables follow the model they are loaded into (``models/pos_embed.py``). Shape mismatches fail
with the key names; missing and unexpected keys come back in one :class:`LoadReport`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from mae_lightning.checkpoint import WeightsMismatchError, read_state_dict, summarize_keys
from mae_lightning.models.pos_embed import adapt_position_tables


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


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


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
