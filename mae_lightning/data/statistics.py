"""Per-band statistics of array data: computed from files, stored in checkpoints, applied by :class:`NormalizeBands`.

A DataModule of arrays without a given ``mean``/``std`` takes them, when its first DataLoader is made, from the
checkpoint being restored, else from the checkpoint handed over with ``use_statistics_of`` (the weights a probe or
fine-tuning starts from, so it normalises as its pretraining did), else from its training files
(:func:`band_statistics`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mae_lightning.checkpoint import read_checkpoint
from mae_lightning.data.datasets import UnreadableImageError


def checked_statistics(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as float tuples of ``in_chans`` values each; ValueError for another count or a std <= 0."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std need in_chans={in_chans} values, got mean={mean}, std={std}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def per_channel(stats: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Colour statistics for ``in_chans`` channels: as given when they match, else their mean repeated."""
    if len(stats) == in_chans:
        return tuple(stats)
    return (sum(stats) / len(stats),) * in_chans


def short(values: Sequence[float]) -> str:
    """``(1.5, 2.25)``: statistics for a log line."""
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


class NormalizeBands:
    """``(x - mean) / std`` per band of a (C, H, W) tensor, with statistics that are set after it is built.

    The DataModule sets them when its first DataLoader is made; the workers, started after that, carry them.
    """

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (C, H, W) in the data's units -> (C, H, W) normalised."""
        if self.mean is None or self.std is None:
            raise RuntimeError("NormalizeBands has no statistics yet: the DataModule sets them before loading")
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        state = "unset" if self.mean is None else f"{self.mean.numel()} bands"
        return f"{type(self).__name__}({state})"


def band_statistics(dataset: Dataset, num_files: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-band ``(mean, std, files_read)`` over every pixel of ``num_files`` samples of ``dataset`` drawn by ``seed``.

    ``dataset``'s items are ``(tensor (C, H, W), target)``, read untransformed (whole files, in their own units);
    unreadable ones (``UnreadableImageError``) are left out here (training skips and counts them), and a
    RuntimeError says when none can be read. The per-file moments are merged exactly (Chan et al.), in
    float64. A band that is constant in the sample gets std 1, so normalising it cannot divide by zero.
    """
    size = len(dataset)  # type: ignore[arg-type]
    picked = np.sort(np.random.default_rng(seed).permutation(size)[: min(num_files, size)])
    moments, read, first_error = None, 0, None
    for index in picked.tolist():
        try:
            x = dataset[index][0].double().flatten(1)  # (C, H*W)
        except UnreadableImageError as err:
            first_error = first_error or err
            continue
        file_mean = x.mean(dim=1)
        file_moments = (x.shape[1], file_mean, ((x - file_mean[:, None]) ** 2).sum(dim=1))
        moments = file_moments if moments is None else _merge_moments(moments, file_moments)
        read += 1
    if moments is None:
        raise RuntimeError(f"none of the {len(picked)} files drawn for the band statistics can be read ({first_error})")
    count, mean, m2 = moments
    std = (m2 / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist()), read


def _merge_moments(a: tuple[int, Tensor, Tensor], b: tuple[int, Tensor, Tensor]) -> tuple[int, Tensor, Tensor]:
    """(count, mean (C,), sum of squared deviations (C,)) of two sets of pixels -> the same of their union."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    total, delta = n_a + n_b, mean_b - mean_a
    return total, mean_a + delta * (n_b / total), m2_a + m2_b + delta**2 * (n_a * n_b / total)


def statistics_in_checkpoint(
    path: str | os.PathLike, key: str, in_chans: int
) -> tuple[list[float], list[float]] | None:
    """The ``mean``/``std`` a DataModule stored in a Lightning checkpoint (under ``key``, else any), or None.

    None as well for a file that stores no DataModule state (an official ``.pth``, say) or cannot be read.
    """
    try:
        # mmap: only the few bytes of the DataModule's state are read, not the weights.
        states = read_checkpoint(path, mmap=True).data_states
    except (ValueError, OSError):
        return None
    candidates = [states.get(key)] + [state for name, state in states.items() if name != key]
    for state in candidates:
        if isinstance(state, dict) and {"mean", "std"} <= state.keys():
            mean, std = state["mean"], state["std"]
            if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == in_chans:
                return mean, std
    return None
