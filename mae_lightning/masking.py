"""Which patches the encoder sees: a masking strategy scores every patch, the lowest scores stay visible.

Every strategy hides exactly the same number of patches per sample (:func:`mask_from_scores`), so the model's
fast path works with any of them. The scores are the ``noise`` that ``MaskedAutoencoder.forward`` accepts.
Here: :class:`RandomMasking` (the paper's default), :class:`BlockMasking` (BEiT's), :class:`GridMasking`, and for
spectrograms (Audio-MAE's) :class:`TimeMasking`, :class:`FrequencyMasking` and :class:`TimeFrequencyMasking`.

A new strategy is one small subclass with a ``scores`` method; select it in YAML with
``model.init_args.model.init_args.masking: {class_path: mae_lightning.BlockMasking}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mae_lightning.ops import inverse_permutation

# How often BEiT tries to place a rectangle before it stops adding blocks to a mask.
BLOCK_ATTEMPTS = 10


class MaskingStrategy:
    """Scores patches for masking: the ``int(L * (1 - mask_ratio))`` lowest of each sample stay visible, in the
    official ``random_masking`` order.

    Subclasses implement :meth:`scores`. A strategy holds settings only (no parameters, no state), so it
    changes neither the model's ``state_dict`` nor its checkpoints.
    """

    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-patch scores of a batch: -> (n, gh * gw), patches in row-major order.

        Args:
            n: samples in the batch.
            grid: patch grid (gh, gw).
            mask_ratio: share of patches to hide.
            device: where the scores are returned.
            generator: the source of every random draw; the global torch generator when None (whose
                state a checkpoint saves, so a resumed run repeats its masks).
        """
        raise NotImplementedError

    def fixed_scores(self, sample_ids: Tensor, grid: tuple[int, int], mask_ratio: float, seed: int) -> Tensor:
        """Scores that depend on each sample's id alone, not on its batch, process or device.

        sample_ids: (N,) integers (e.g. positions in the validation set) -> (N, gh * gw) on the CPU, row ``i``
        drawn from a generator seeded with ``(seed, sample_ids[i])`` (:func:`sample_generator`).
        """
        rows = [self.scores(1, grid, mask_ratio, "cpu", sample_generator(seed, i)) for i in sample_ids.tolist()]
        return torch.cat(rows) if rows else torch.empty(0, grid[0] * grid[1])

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({settings})"


class RandomMasking(MaskingStrategy):
    """Uniform noise: every patch equally likely to be hidden, independently per sample (the paper's default).

    Without a generator this is the official draw, ``torch.rand(n, L)`` on the batch's device.
    """

    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        length = grid[0] * grid[1]
        if generator is None:
            return torch.rand(n, length, device=device)
        return torch.rand(n, length, generator=generator, device=generator.device).to(device)


class BlockMasking(MaskingStrategy):
    """BEiT's blockwise masking: rectangles of patches, added until the hidden share is covered.

    As BEiT's ``MaskingGenerator`` (microsoft/unilm, Bao et al. 2021): each block has an area drawn
    uniformly between ``min_num_patches`` and the patches still to hide (at most ``max_num_patches``)
    and a log-uniform aspect ratio in ``[min_aspect, max_aspect]``; a block that adds no patch or too
    many is drawn again, up to 10 times, after which the mask is left as it is. Block patches score
    above all others and ties break at random, so exactly ``L - int(L * (1 - mask_ratio))`` patches are
    hidden: the blocks, topped up with random patches if they fell short. Drawn on the CPU for the
    whole batch at once (as BEiT does in its data workers), from the torch generator only.

    Args:
        min_num_patches: smallest block area in patches.
        max_num_patches: largest block area in patches; None: the patches still to hide (BEiT's default).
        min_aspect: smallest height / width ratio of a block.
        max_aspect: largest height / width ratio; None: ``1 / min_aspect``.
    """

    def __init__(
        self,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        max_aspect = 1 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
        if min_num_patches < 1 or (max_num_patches is not None and max_num_patches < min_num_patches):
            raise ValueError(
                f"BlockMasking needs 1 <= min_num_patches <= max_num_patches, got {min_num_patches}, {max_num_patches}"
            )
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"BlockMasking needs 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.min_aspect = min_aspect
        self.max_aspect = max_aspect

    # A host-side loop on small CPU tensors: under torch.compile it runs eagerly instead of breaking the graph
    # at every round.
    @torch.compiler.disable
    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        length = grid[0] * grid[1]
        blocks = self.blocks(n, grid, length - num_kept(length, mask_ratio), generator)
        tie_break = _cpu_rand((n, length), generator)
        return (blocks.flatten(1).float() + tie_break).to(device)

    def blocks(self, n: int, grid: tuple[int, int], target: int, generator: torch.Generator | None = None) -> Tensor:
        """BEiT's block masks of a batch, at most ``target`` patches each: -> (n, gh, gw) bool on the CPU."""
        gh, gw = grid
        mask = torch.zeros(n, gh, gw, dtype=torch.bool)
        count = torch.zeros(n, dtype=torch.long)
        active = count < target
        cap = target if self.max_num_patches is None else self.max_num_patches
        samples = torch.arange(n)
        # Every sample of the batch places its next block in the same round: the loop runs over blocks, not samples.
        while bool(active.any()):
            limit = (target - count).clamp(max=cap)
            top, left, h, w = self._candidates(n, grid, limit, generator)  # (n, attempts) each
            added = h * w - _sum_in_rectangles(mask, top, left, h, w)
            fits = (h < gh) & (w < gw) & (added > 0) & (added <= limit[:, None]) & active[:, None]
            # BEiT keeps the first rectangle that fits; a sample where none does is finished.
            placed = fits.any(dim=1)
            first = fits.int().argmax(dim=1)
            chosen = _rectangles(grid, *(x[samples, first] for x in (top, left, h, w)))
            mask |= chosen & placed[:, None, None]
            count = mask.flatten(1).sum(dim=1)
            active = placed & (count < target)
        return mask

    def _candidates(
        self, n: int, grid: tuple[int, int], limit: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """BEiT's random rectangles, BLOCK_ATTEMPTS per sample: limit (n,) -> top, left, h, w, each (n, attempts).

        Those that do not fit strictly inside the grid (BEiT's ``w < width and h < height``) are the caller's to drop.
        """
        gh, gw = grid
        u = _cpu_rand((n, BLOCK_ATTEMPTS, 4), generator, torch.float64)
        low = float(self.min_num_patches)
        area = low + u[..., 0] * (limit[:, None].double() - low)
        log_min, log_max = math.log(self.min_aspect), math.log(self.max_aspect)
        aspect = torch.exp(log_min + u[..., 1] * (log_max - log_min))
        # torch.round rounds half to even, as Python's round in BEiT.
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        # randint(0, side - extent), both ends included.
        top = (u[..., 2] * (gh - h + 1).clamp(min=1)).floor().long()
        left = (u[..., 3] * (gw - w + 1).clamp(min=1)).floor().long()
        return top, left, h, w


def _sum_in_rectangles(mask: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Set cells of each rectangle: mask (n, gh, gw) bool, top/left/h/w (n, k) -> (n, k), by a summed-area table.

    A rectangle reaching past the grid is clipped to it.
    """
    n, gh, gw = mask.shape
    table = torch.zeros(n, gh + 1, gw + 1, dtype=torch.long)
    table[:, 1:, 1:] = mask.long().cumsum(1).cumsum(2)
    flat = table.flatten(1)
    bottom, right = (top + h).clamp(max=gh), (left + w).clamp(max=gw)

    def at(row: Tensor, col: Tensor) -> Tensor:
        return flat.gather(1, row * (gw + 1) + col)

    return at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)


def _rectangles(grid: tuple[int, int], top: Tensor, left: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """top, left, h, w: (n,) -> (n, gh, gw) bool, True inside each rectangle."""
    rows, cols = torch.arange(grid[0]), torch.arange(grid[1])
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


class GridMasking(MaskingStrategy):
    """The paper's grid-wise sampling: keep the top-left patch of every k x k cell, hide the rest.

    Deterministic (the same mask for every sample and every step). At ``mask_ratio`` 0.75 the cells are
    2 x 2 (the paper's ablation); in general ``mask_ratio`` must be ``1 - 1/k**2`` (0.75, 0.8888,
    0.9375, ...) and both sides of the patch grid multiples of ``k``, so the kept patches form a
    regular grid of exactly ``int(L * (1 - mask_ratio))``; anything else is refused. The count is
    rounded down as in the official code, so write 8/9 as 0.8888 (0.8889 keeps one patch fewer).
    """

    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        gh, gw = grid
        k = self.cell_side(grid, mask_ratio)
        rows = torch.arange(gh, device=device)[:, None]
        cols = torch.arange(gw, device=device)[None, :]
        hidden = ((rows % k != 0) | (cols % k != 0)).flatten()
        # Distinct scores, so that the order of the visible patches is fixed too (row-major).
        length = gh * gw
        order = hidden.float() * length + torch.arange(length, device=device)
        return order.expand(n, length).clone()

    @staticmethod
    def cell_side(grid: tuple[int, int], mask_ratio: float) -> int:
        """The side k of the cells of one kept patch each; raises unless they tile the grid exactly."""
        gh, gw = grid
        k = round((1 / (1 - mask_ratio)) ** 0.5) if mask_ratio < 1 else 0
        if k < 2 or gh % k or gw % k or num_kept(gh * gw, mask_ratio) != (gh // k) * (gw // k):
            raise ValueError(
                f"GridMasking keeps one patch of every k x k cell: mask_ratio must be 1 - 1/k**2 (0.75, 0.8888, "
                f"0.9375, ...) and the patch grid a multiple of k, got mask_ratio={mask_ratio} on a {gh}x{gw} grid"
            )
        return k


class _WholeLineMasking(MaskingStrategy):
    """Whole lines of the patch grid (columns when ``axis`` is 1, rows when 0) hidden at random, in a random order.

    Every sample ranks its lines in a random order; the patches of a line share its rank (plus a tie-break below
    half a rank, so lines never interleave), so the visible patches are whole lines, the best ranked first, and
    where ``int(L * (1 - mask_ratio))`` is not a multiple of the line length one line is partly visible (its
    lowest-scored patches): the count is exact as for every strategy.
    """

    axis: int  # the grid axis the lines run across: 1 columns (time), 0 rows (frequency)

    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        rank = _ranks(_rand((n, grid[self.axis]), device, generator)).float()
        rank = rank[:, None, :] if self.axis == 1 else rank[:, :, None]
        return (rank + 0.5 * _rand((n, *grid), device, generator)).flatten(1)


class TimeMasking(_WholeLineMasking):
    """Audio-MAE's time masking: whole time frames (columns of the patch grid) hidden at random.

    A spectrogram is an image (1, n_mels, frames): the rows of the patch grid are frequency bands, its columns
    time frames. The visible patches are whole columns, in a random order per sample; where
    ``int(L * (1 - mask_ratio))`` is not a multiple of the column height, one column is partly visible (its
    lowest-scored patches), so the count is exact as for every strategy.
    """

    axis = 1


class FrequencyMasking(_WholeLineMasking):
    """Audio-MAE's frequency masking: whole mel bands (rows of the patch grid) hidden at random.

    :class:`TimeMasking` along the other axis: the visible patches are whole rows, with one row partly visible
    where ``int(L * (1 - mask_ratio))`` is not a multiple of the row length.
    """

    axis = 0


class TimeFrequencyMasking(MaskingStrategy):
    """Audio-MAE's 2-D masking (``random_masking_2d``): random time columns and random mel rows hidden at once.

    A share ``time_ratio`` of the columns (time frames) is hidden, and a share ``freq_ratio`` of the rows
    (mel bands) such that ``(1 - time_ratio) * (1 - freq_ratio) = 1 - mask_ratio``: at ``mask_ratio`` 0.8 the
    default 0.6 gives ``freq_ratio`` 0.5, Audio-MAE's ``mask_t_prob`` and ``mask_f_prob``. A patch is visible
    when both its column and its row are kept: ``round(gw * (1 - time_ratio))`` columns and
    ``round(gh * (1 - freq_ratio))`` rows, at least one of each. The patches of kept rows and columns score
    below all others, at random within each group, so exactly ``int(L * (1 - mask_ratio))`` are visible: where
    rows x columns differs from it (rounding), the difference is taken from the crossing, or made up from
    the other patches, at random.

    Args:
        time_ratio: share of the time columns hidden, in [0, 1) and at most ``mask_ratio``.
    """

    def __init__(self, time_ratio: float = 0.6) -> None:
        if not 0 <= time_ratio < 1:
            raise ValueError(f"TimeFrequencyMasking needs 0 <= time_ratio < 1, got time_ratio={time_ratio}")
        self.time_ratio = time_ratio

    def freq_ratio(self, mask_ratio: float) -> float:
        """The share of mel rows hidden with ``mask_ratio``; raises where ``time_ratio`` alone hides more."""
        if self.time_ratio > mask_ratio:
            raise ValueError(
                f"TimeFrequencyMasking hides time_ratio={self.time_ratio} of the columns, more than "
                f"mask_ratio={mask_ratio} of the patches: time_ratio must be at most mask_ratio"
            )
        return 1 - (1 - mask_ratio) / (1 - self.time_ratio)

    def scores(
        self,
        n: int,
        grid: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        gh, gw = grid
        keep_rows = max(1, round(gh * (1 - self.freq_ratio(mask_ratio))))
        keep_cols = max(1, round(gw * (1 - self.time_ratio)))
        row_kept = _ranks(_rand((n, gh), device, generator)) < keep_rows  # (n, gh)
        col_kept = _ranks(_rand((n, gw), device, generator)) < keep_cols  # (n, gw)
        hidden = ~(row_kept[:, :, None] & col_kept[:, None, :])
        return (hidden.float() + _rand((n, gh, gw), device, generator)).flatten(1)


def _ranks(noise: Tensor) -> Tensor:
    """noise (n, k) -> (n, k) integer ranks 0..k-1 of each row: a random permutation for uniform noise."""
    return torch.argsort(torch.argsort(noise, dim=1), dim=1)


def _rand(shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) values on ``device``: from the global generator of that device when ``generator`` is None,
    else drawn where ``generator`` lives and moved (as :class:`RandomMasking`)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """How many patches the encoder sees: ``int(L * (1 - mask_ratio))``, as the official code."""
    return int(num_patches * (1 - mask_ratio))


def masking_order(noise: Tensor, len_keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample token order of the masking: the ``len_keep`` tokens with the smallest noise are kept.

    noise: (N, L) -> ids_shuffle (N, L) (kept tokens first), ids_restore (N, L) (its inverse),
    mask (N, L) float with 1 on removed tokens, in the original token order.
    """
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = inverse_permutation(ids_shuffle)
    # A token is removed exactly when its rank in the shuffle is >= len_keep.
    mask = (ids_restore >= len_keep).to(noise.dtype)
    return ids_shuffle, ids_restore, mask


def mask_from_scores(scores: Tensor, mask_ratio: float, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, int]:
    """:func:`masking_order` keeping the ``int(L * (1 - mask_ratio))`` lowest scores, and len_keep.

    scores: (N, L), checked against ``shape`` = (N, L).
    """
    if scores.shape != shape:
        raise ValueError(f"noise must have shape (N, L) = {tuple(shape)}, got {tuple(scores.shape)}")
    len_keep = num_kept(scores.shape[1], mask_ratio)
    ids_shuffle, ids_restore, mask = masking_order(scores, len_keep)
    return ids_shuffle, ids_restore, mask, len_keep


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """A CPU generator of its own for sample ``sample_id``, seeded from ``(seed, sample_id)``."""
    # SeedSequence mixes the pair, so neighbouring ids and seeds give unrelated streams.
    state = np.random.SeedSequence([seed, sample_id]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))


def _cpu_rand(shape: tuple[int, ...], generator: torch.Generator | None, dtype=torch.float32) -> Tensor:
    """Uniform [0, 1) values on the CPU from ``generator`` (the global CPU generator when None)."""
    if generator is None:
        return torch.rand(shape, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).cpu()
