"""Audio-MAE's masking of spectrograms: whole time columns, whole mel rows, or both at once; exact counts, random
streams, and the model.

A spectrogram is an image (1, n_mels, frames): rows of the patch grid are mel bands, columns time frames.
"""

from __future__ import annotations

import pytest
import torch

import mae_lightning
from mae_lightning import FrequencyMasking, MaskedAutoencoder, TimeFrequencyMasking, TimeMasking
from mae_lightning.masking import mask_from_scores, num_kept

GRIDS = [(8, 62), (4, 16), (5, 7)]
RATIOS = [0.8, 0.75, 0.5]
# TimeFrequencyMasking hides at most mask_ratio of the columns: the paper's 0.6 runs at 0.8 and 0.75, not 0.5.
CASES = [
    (strategy, ratio)
    for ratio in RATIOS
    for strategy in (TimeMasking(), FrequencyMasking(), TimeFrequencyMasking(), TimeFrequencyMasking(0.25))
    if getattr(strategy, "time_ratio", 0) <= ratio
]


def visible(scores: torch.Tensor, mask_ratio: float, grid: tuple[int, int]) -> torch.Tensor:
    """scores (N, L) -> (N, gh, gw) bool, True on the patches the encoder sees."""
    mask = mask_from_scores(scores, mask_ratio, tuple(scores.shape))[2]
    return (mask == 0).view(-1, *grid)


def whole_and_partial_lines(seen: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """seen (N, gh, gw) -> per sample, the count of fully visible and of partly visible lines (columns: dim 1)."""
    per_line = seen.sum(dim=dim)
    length = seen.shape[dim]
    return (per_line == length).sum(dim=1), ((per_line > 0) & (per_line < length)).sum(dim=1)


# ---------------------------------------------------------------------------- every strategy: exact counts
@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize(("strategy", "mask_ratio"), CASES, ids=str)
def test_every_sample_sees_exactly_num_kept_patches(strategy, mask_ratio, grid):
    scores = strategy.scores(16, grid, mask_ratio, "cpu")
    assert scores.shape == (16, grid[0] * grid[1])
    counts = visible(scores, mask_ratio, grid).flatten(1).sum(dim=1)
    assert torch.equal(counts, torch.full((16,), num_kept(grid[0] * grid[1], mask_ratio)))


# ---------------------------------------------------------------------------- time and frequency: whole lines
@pytest.mark.parametrize(
    ("strategy", "grid", "dim"),
    # 0.75 of a 4 x 12 grid keeps 12 patches: 3 whole columns, or 1 whole row; of an 8 x 6 grid, 2 whole rows.
    [(TimeMasking(), (4, 12), 1), (FrequencyMasking(), (4, 12), 2), (FrequencyMasking(), (8, 6), 2)],
    ids=str,
)
def test_a_count_that_divides_keeps_whole_lines_only(strategy, grid, dim):
    seen = visible(strategy.scores(32, grid, 0.75, "cpu"), 0.75, grid)
    line = grid[0] if dim == 1 else grid[1]
    whole, partial = whole_and_partial_lines(seen, dim)
    assert torch.equal(whole, torch.full((32,), num_kept(grid[0] * grid[1], 0.75) // line))
    assert int(partial.max()) == 0


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("mask_ratio", RATIOS)
@pytest.mark.parametrize(("strategy", "dim"), [(TimeMasking(), 1), (FrequencyMasking(), 2)], ids=str)
def test_at_most_one_line_is_partly_visible(strategy, dim, mask_ratio, grid):
    seen = visible(strategy.scores(32, grid, mask_ratio, "cpu"), mask_ratio, grid)
    kept, line = num_kept(grid[0] * grid[1], mask_ratio), seen.shape[dim]
    whole, partial = whole_and_partial_lines(seen, dim)
    assert torch.equal(whole, torch.full((32,), kept // line))
    assert torch.equal(partial, torch.full((32,), int(kept % line > 0)))


def test_the_int_of_l_times_point_two_is_one_below_a_fifth():
    """As the official code: int(40 * (1 - 0.8)) is 7, not 8, so 0.8 of a 4 x 10 grid leaves one column partial."""
    assert num_kept(40, 0.8) == 7 and num_kept(200, 0.8) == 39
    seen = visible(TimeMasking().scores(8, (4, 10), 0.8, "cpu"), 0.8, (4, 10))
    whole, partial = whole_and_partial_lines(seen, 1)
    assert torch.equal(whole, torch.full((8,), 1)) and torch.equal(partial, torch.full((8,), 1))


@pytest.mark.parametrize(("strategy", "dim"), [(TimeMasking(), 1), (FrequencyMasking(), 2)], ids=str)
def test_every_patch_is_equally_likely_to_be_seen(strategy, dim):
    """No column (row), and no patch within the partly visible one, is favoured: 6.5 of 16 columns seen on 4 x 16."""
    grid, mask_ratio = (4, 16), 0.6  # 25 of 64 kept: 6 whole columns and 1 patch, or 1 whole row and 9 patches
    generator = torch.Generator().manual_seed(0)
    seen = visible(strategy.scores(4000, grid, mask_ratio, "cpu", generator), mask_ratio, grid).float().mean(dim=0)
    share = num_kept(64, mask_ratio) / 64
    assert float((seen - share).abs().max()) < 0.05


# ---------------------------------------------------------------------------- time and frequency at once
def crossing(scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, L) -> (N, gh, gw) bool: the patches of kept rows and kept columns (scores below 1)."""
    return (scores < 1).view(-1, *grid)


def is_product(cells: torch.Tensor) -> torch.Tensor:
    """cells (N, gh, gw) bool -> (N,) bool: True where cells is exactly (a row set) x (a column set)."""
    rows, cols = cells.any(dim=2), cells.any(dim=1)
    return (cells == (rows[:, :, None] & cols[:, None, :])).flatten(1).all(dim=1)


@pytest.mark.parametrize(
    ("grid", "mask_ratio", "time_ratio", "columns", "rows"),
    [
        ((10, 20), 0.75, 0.5, 10, 5),  # 50 = num_kept(200, 0.75)
        ((4, 16), 0.8, 0.6, 6, 2),  # the paper's pair (freq_ratio 0.5): round(6.4) x 2 = 12 = num_kept(64, 0.8)
        ((8, 18), 0.8, 0.6, 7, 4),  # round(7.2) x 4 = 28 = num_kept(144, 0.8)
        ((6, 20), 0.5, 0.5, 10, 6),  # time_ratio = mask_ratio: every row kept
    ],
    ids=str,
)
def test_the_visible_patches_are_kept_rows_times_kept_columns(grid, mask_ratio, time_ratio, columns, rows):
    assert columns * rows == num_kept(grid[0] * grid[1], mask_ratio)
    seen = visible(TimeFrequencyMasking(time_ratio).scores(32, grid, mask_ratio, "cpu"), mask_ratio, grid)
    assert bool(is_product(seen).all())
    assert torch.equal(seen.any(dim=1).sum(dim=1), torch.full((32,), columns))
    assert torch.equal(seen.any(dim=2).sum(dim=1), torch.full((32,), rows))


def test_the_paper_pair_gives_freq_ratio_one_half():
    assert TimeFrequencyMasking(0.6).freq_ratio(0.8) == pytest.approx(0.5)
    assert TimeFrequencyMasking(0.5).freq_ratio(0.5) == 0


@pytest.mark.parametrize("grid", [*GRIDS, (10, 20)], ids=str)
@pytest.mark.parametrize(("time_ratio", "mask_ratio"), [(0.6, 0.8), (0.6, 0.75), (0.25, 0.5), (0.5, 0.5)])
def test_rounding_is_made_up_at_random_around_the_crossing(grid, time_ratio, mask_ratio):
    """Kept rows x kept columns score below the rest; the count is met by taking from them or adding to them.

    At 0.8 a 10 x 20 grid crosses 8 columns and 5 rows (40 patches) but keeps int(200 * 0.2) = 39.
    """
    strategy = TimeFrequencyMasking(time_ratio)
    scores = strategy.scores(32, grid, mask_ratio, "cpu")
    cells = crossing(scores, grid)
    columns = max(1, round(grid[1] * (1 - time_ratio)))
    rows = max(1, round(grid[0] * (1 - strategy.freq_ratio(mask_ratio))))
    assert bool(is_product(cells).all())
    assert torch.equal(cells.any(dim=1).sum(dim=1), torch.full((32,), columns))
    assert torch.equal(cells.any(dim=2).sum(dim=1), torch.full((32,), rows))
    seen = visible(scores, mask_ratio, grid)
    if rows * columns >= num_kept(grid[0] * grid[1], mask_ratio):
        assert not bool((seen & ~cells).any())  # the visible patches lie in the crossing
    else:
        assert not bool((cells & ~seen).any())  # the whole crossing is visible, topped up from the rest


def test_time_frequency_masking_favours_no_patch():
    grid, mask_ratio = (4, 16), 0.75  # 6 columns x round(4 * 0.625) = 2 rows = 12, topped up to 16
    generator = torch.Generator().manual_seed(0)
    scores = TimeFrequencyMasking().scores(4000, grid, mask_ratio, "cpu", generator)
    seen = visible(scores, mask_ratio, grid).float().mean(dim=0)
    assert float((seen - 16 / 64).abs().max()) < 0.05


# ---------------------------------------------------------------------------- random streams and devices
STRATEGIES = [TimeMasking(), FrequencyMasking(), TimeFrequencyMasking()]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_masks_differ_between_samples_and_between_draws(strategy):
    grid = (8, 62)
    first = visible(strategy.scores(8, grid, 0.8, "cpu"), 0.8, grid)
    second = visible(strategy.scores(8, grid, 0.8, "cpu"), 0.8, grid)
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 8))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_a_generator_makes_the_masks_reproducible(strategy):
    draw = [strategy.scores(4, (5, 7), 0.75, "cpu", torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    other = strategy.scores(4, (5, 7), 0.75, "cpu", torch.Generator().manual_seed(4))
    assert not torch.equal(draw[0], other)
    # the generator is the only source: the global stream is neither read nor advanced
    state = torch.get_rng_state()
    strategy.scores(4, (5, 7), 0.75, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_without_a_generator_the_global_stream_draws(strategy):
    torch.manual_seed(5)
    first = strategy.scores(4, (4, 16), 0.8, "cpu")
    torch.manual_seed(5)
    assert torch.equal(strategy.scores(4, (4, 16), 0.8, "cpu"), first)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_fixed_scores_are_the_same_twice_and_differ_per_sample(strategy):
    ids = torch.tensor([0, 5, 17, 3])
    first = strategy.fixed_scores(ids, (8, 62), 0.8, seed=7)
    assert torch.equal(strategy.fixed_scores(ids, (8, 62), 0.8, seed=7), first)
    assert torch.equal(strategy.fixed_scores(ids[2:3], (8, 62), 0.8, seed=7), first[2:3])  # not its batch
    seen = visible(first, 0.8, (8, 62))
    assert all(not torch.equal(seen[0], seen[i]) for i in range(1, 4))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_scores_are_on_the_requested_device(strategy):
    assert strategy.scores(2, (4, 16), 0.8, "cpu").device == torch.device("cpu")
    drawn = strategy.scores(2, (4, 16), 0.8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert drawn.device == torch.device("cpu") and drawn.dtype == torch.float32


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("time_ratio", [1.0, -0.1, 1.5])
def test_a_time_ratio_outside_zero_one_is_refused_in_one_line(time_ratio):
    with pytest.raises(ValueError, match=rf"0 <= time_ratio < 1, got time_ratio={time_ratio}") as error:
        TimeFrequencyMasking(time_ratio)
    assert "\n" not in str(error.value)


def test_a_time_ratio_above_the_mask_ratio_is_refused_in_one_line():
    strategy = TimeFrequencyMasking(0.6)
    with pytest.raises(ValueError, match=r"time_ratio=0.6 .* mask_ratio=0.5") as error:
        strategy.scores(2, (4, 16), 0.5, "cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="mask_ratio=0.5"):
        strategy.fixed_scores(torch.arange(2), (4, 16), 0.5, seed=0)


def test_the_strategies_are_exported_and_hold_settings_only():
    for name in ("TimeMasking", "FrequencyMasking", "TimeFrequencyMasking"):
        assert name in mae_lightning.__all__ and hasattr(mae_lightning, name)
    assert repr(TimeMasking()) == "TimeMasking()" and repr(FrequencyMasking()) == "FrequencyMasking()"
    assert repr(TimeFrequencyMasking()) == "TimeFrequencyMasking(time_ratio=0.6)"


# ---------------------------------------------------------------------------- in the model
def spectrogram_mae(masking) -> MaskedAutoencoder:
    return MaskedAutoencoder(
        img_size=(16, 64),
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        masking=masking,
    )


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_each_strategy_runs_inside_the_model(strategy, one_torch_thread):
    torch.manual_seed(0)
    model = spectrogram_mae(strategy)
    assert model.grid_size == (4, 16)
    imgs = torch.randn(2, 1, 16, 64)
    loss, pred, mask = model(imgs, mask_ratio=0.75)
    assert pred.shape == (2, 64, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((2,), float(64 - num_kept(64, 0.75))))
    assert bool(torch.isfinite(loss))
    # the fast path with the same masks gives the same loss
    noise = model.fixed_noise(torch.arange(2), 0.75, seed=0)
    fast, latent, _ = model.forward_train(imgs, 0.75, noise)
    torch.testing.assert_close(fast, model(imgs, 0.75, noise)[0])
    assert latent.shape == (2, 1 + num_kept(64, 0.75), 32)
