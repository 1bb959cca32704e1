"""The masking strategies: exact counts, the shapes they draw, their random streams, one place for every path."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from mae_lightning import BlockMasking, GridMasking, MAEPretraining, MaskedAutoencoder, RandomMasking
from mae_lightning.callbacks.reconstruction import fixed_mask_noise
from mae_lightning.cli import main
from mae_lightning.masking import mask_from_scores, masking_order, num_kept, sample_generator
from mae_lightning.ops import gather_tokens
from tests.helpers import QUICKSTART, tiny_mae
from tests.reference import BEiTMaskingGenerator, official_random_masking

GRIDS = [(8, 8), (4, 6), (7, 5), (14, 14), (3, 16)]
RATIOS = [0.25, 0.4, 0.5, 0.75, 0.9]


def hidden(scores: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """scores (N, L) -> (N, L) bool, True on the patches the model hides."""
    return mask_from_scores(scores, mask_ratio, tuple(scores.shape))[2].bool()


def masked_neighbour_share(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Of all 4-neighbours (inside the grid) of hidden patches, the share that is hidden too."""
    m = mask.view(-1, *grid).bool()
    both = 2 * ((m[:, 1:] & m[:, :-1]).sum() + (m[:, :, 1:] & m[:, :, :-1]).sum())
    degree = torch.zeros(grid, dtype=torch.long)
    degree[1:] += 1
    degree[:-1] += 1
    degree[:, 1:] += 1
    degree[:, :-1] += 1
    return float(both / (m * degree).sum())


# ---------------------------------------------------------------------------- the default: today's draw
def test_random_masking_is_the_official_uniform_draw():
    torch.manual_seed(3)
    expected = torch.rand(5, 24)
    torch.manual_seed(3)
    assert torch.equal(RandomMasking().scores(5, (4, 6), 0.75, "cpu"), expected)


@pytest.mark.parametrize("masking", [None, RandomMasking()])
def test_training_masks_and_loss_are_bit_identical_to_uniform_noise(masking):
    """With no noise given the model draws torch.rand(N, L), exactly as before strategies existed."""
    torch.manual_seed(0)
    model = tiny_mae(img_size=(16, 24), masking=masking)
    imgs = torch.randn(4, 1, 16, 24)
    torch.manual_seed(1)
    loss, latent, _ = model.forward_train(imgs, 0.75)
    _, _, mask = model(imgs, 0.75)  # the next draw
    torch.manual_seed(1)
    noise = torch.rand(4, 24)
    expected_loss, expected_latent, _ = model.forward_train(imgs, 0.75, noise)
    expected_mask = masking_order(torch.rand(4, 24), num_kept(24, 0.75))[2]
    assert torch.equal(loss, expected_loss) and torch.equal(latent, expected_latent)
    assert torch.equal(mask, expected_mask)


def test_fixed_random_noise_is_the_per_sample_draw_of_earlier_runs():
    """Validation masks of RandomMasking: row i from its own generator seeded by (seed, id), as val/loss always was."""
    ids = torch.tensor([0, 5, 17, 3])
    rows = []
    for sample_id in ids.tolist():
        state = np.random.SeedSequence([7, sample_id]).generate_state(2, dtype=np.uint32)
        rows.append(torch.rand(24, generator=torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))))
    assert torch.equal(RandomMasking().fixed_scores(ids, (4, 6), 0.75, seed=7), torch.stack(rows))


# ---------------------------------------------------------------------------- the official random_masking
def our_random_masking(x, mask_ratio, noise=None):
    """The official ``random_masking`` on tokens, by the model's one path: RandomMasking scores, mask_from_scores.

    x: (N, L, D) -> kept (N, L_keep, D), mask (N, L) in x's dtype, ids_restore (N, L).
    """
    n, length, _ = x.shape
    if noise is None:
        noise = RandomMasking().scores(n, (1, length), mask_ratio, x.device)
    ids_shuffle, ids_restore, mask, len_keep = mask_from_scores(noise, mask_ratio, (n, length))
    return gather_tokens(x, ids_shuffle[:, :len_keep]), mask.to(x.dtype), ids_restore


@pytest.mark.parametrize("length,ratio", [(64, 0.75), (49, 0.75), (196, 0.75), (10, 0.5), (7, 0.9)])
def test_random_masking_equals_official(length, ratio):
    x = torch.randn(3, length, 8)
    noise = torch.rand(3, length)
    ours = our_random_masking(x, ratio, noise)
    official = official_random_masking(x, ratio, noise)
    for a, b in zip(ours, official, strict=True):
        assert torch.equal(a, b)


def test_masking_keeps_int_of_l_times_one_minus_ratio():
    for length, ratio, expected in [(196, 0.75, 49), (64, 0.75, 16), (49, 0.75, 12), (10, 0.33, 6)]:
        assert num_kept(length, ratio) == expected
        kept, mask, _ = our_random_masking(torch.randn(2, length, 4), ratio)
        assert kept.shape == (2, expected, 4)
        assert torch.equal(mask.sum(dim=1), torch.full((2,), float(length - expected)))


def test_masking_differs_per_sample_and_keeps_smallest_noise():
    torch.manual_seed(0)
    x = torch.arange(16.0).reshape(1, 16, 1).expand(8, 16, 1).contiguous()
    kept, mask, _ = our_random_masking(x, 0.75)
    assert len({tuple(row.tolist()) for row in mask}) > 1, "every sample got the same mask"

    noise = torch.rand(8, 16)
    kept, mask, _ = our_random_masking(x, 0.75, noise)
    smallest = torch.argsort(noise, dim=1)[:, :4]
    assert torch.equal(kept[..., 0].long(), smallest)
    assert torch.equal(mask, (noise > noise.sort(dim=1).values[:, 3:4]).float())


def test_ids_restore_inverts_the_shuffle():
    x = torch.randn(4, 20, 3)
    noise = torch.rand(4, 20)
    _, _, ids_restore = our_random_masking(x, 0.5, noise)
    shuffled = torch.gather(x, 1, torch.argsort(noise, 1).unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 3)), x)


def test_masking_rejects_noise_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(2, 8\)"):
        our_random_masking(torch.randn(2, 8, 4), 0.5, torch.rand(2, 7))


# ---------------------------------------------------------------------------- every strategy: exact counts
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mask_ratio", RATIOS)
@pytest.mark.parametrize("strategy", [RandomMasking(), BlockMasking()], ids=repr)
def test_every_sample_hides_exactly_l_minus_len_keep(strategy, grid, mask_ratio):
    length = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(0)
    for scores in (strategy.scores(64, grid, mask_ratio, "cpu", generator), strategy.scores(64, grid, mask_ratio)):
        assert scores.shape == (64, length)
        counts = hidden(scores, mask_ratio).sum(dim=1)
        assert torch.equal(counts, torch.full((64,), length - num_kept(length, mask_ratio)))


@pytest.mark.parametrize("grid,mask_ratio", [((8, 8), 0.75), ((4, 6), 0.75), ((14, 14), 0.75), ((6, 9), 1 - 1 / 9)])
def test_grid_masking_keeps_one_patch_per_cell(grid, mask_ratio):
    k = round((1 / (1 - mask_ratio)) ** 0.5)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    expected = ((rows % k != 0) | (cols % k != 0)).flatten()
    strategy = GridMasking()
    for scores in (
        strategy.scores(3, grid, mask_ratio),
        strategy.scores(3, grid, mask_ratio, "cpu", torch.Generator().manual_seed(1)),
        strategy.fixed_scores(torch.tensor([0, 9, 4]), grid, mask_ratio, seed=2),
    ):
        assert torch.equal(hidden(scores, mask_ratio), expected.expand(3, -1))


@pytest.mark.parametrize("grid,mask_ratio", [((8, 8), 0.5), ((8, 8), 0.6), ((7, 7), 0.75), ((6, 8), 1 - 1 / 9)])
def test_grid_masking_refuses_what_is_not_a_regular_grid_in_one_line(grid, mask_ratio):
    with pytest.raises(ValueError, match=rf"mask_ratio={mask_ratio} on a {grid[0]}x{grid[1]} grid") as error:
        GridMasking().scores(2, grid, mask_ratio)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- BlockMasking: BEiT's blocks
@pytest.mark.parametrize("grid,target", [((14, 14), 75), ((8, 12), 72)])
def test_blocks_have_the_statistics_of_beits_generator(grid, target):
    """The same distribution as BEiT's (its own Python `random`, ours from torch): coverage, shape, placement."""
    random.seed(0)
    reference = torch.from_numpy(np.stack([BEiTMaskingGenerator(grid, target)() for _ in range(600)])).bool()
    ours = BlockMasking().blocks(600, grid, target, torch.Generator().manual_seed(0))
    assert ours.shape == (600, *grid) and ours.dtype == torch.bool
    ref_counts, our_counts = reference.flatten(1).sum(1), ours.flatten(1).sum(1)
    assert int(our_counts.max()) <= target
    assert abs(our_counts.float().mean() - ref_counts.float().mean()) < 0.01 * target
    assert abs((our_counts == target).float().mean() - (ref_counts == target).float().mean()) < 0.06
    ref_share, our_share = masked_neighbour_share(reference, grid), masked_neighbour_share(ours, grid)
    assert abs(our_share - ref_share) < 0.02, (our_share, ref_share)
    assert (ours.float().mean(0) - reference.float().mean(0)).abs().max() < 0.12  # where blocks land


@pytest.mark.parametrize("grid", [(14, 14), (8, 12)])
@pytest.mark.parametrize("mask_ratio", [0.4, 0.75])
def test_block_masks_are_contiguous_and_random_ones_are_not(grid, mask_ratio):
    generator = torch.Generator().manual_seed(0)

    def share(strategy):
        return masked_neighbour_share(
            hidden(strategy.scores(512, grid, mask_ratio, "cpu", generator), mask_ratio), grid
        )

    block, uniform = share(BlockMasking()), share(RandomMasking())
    assert abs(uniform - mask_ratio) < 0.02  # random: a neighbour is hidden as often as any patch
    # A hidden patch borders half as many visible patches (or fewer) when the patches come in blocks.
    assert 1 - block < 0.5 * (1 - uniform), (block, uniform)


def test_block_patches_are_hidden_and_the_rest_is_topped_up_at_random():
    grid, mask_ratio = (14, 14), 0.75
    target = 196 - num_kept(196, mask_ratio)
    blocks = BlockMasking().blocks(256, grid, target, torch.Generator().manual_seed(5)).flatten(1)
    mask = hidden(BlockMasking().scores(256, grid, mask_ratio, "cpu", torch.Generator().manual_seed(5)), mask_ratio)
    assert not (blocks & ~mask).any()  # every block patch is hidden
    short = blocks.sum(1) < target
    assert short.any(), "no mask needed topping up: the test does not test it"
    assert torch.equal(mask.sum(1), torch.full((256,), target))


def test_block_masking_draws_from_torch_alone():
    """A seeded generator or the global torch state repeat the masks; Python's and numpy's generators are untouched."""
    strategy = BlockMasking()
    random.seed(0)
    np.random.seed(0)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    first = strategy.scores(8, (6, 10), 0.6, "cpu", torch.Generator().manual_seed(4))
    assert torch.equal(first, strategy.scores(8, (6, 10), 0.6, "cpu", torch.Generator().manual_seed(4)))
    assert not torch.equal(first, strategy.scores(8, (6, 10), 0.6, "cpu", torch.Generator().manual_seed(5)))
    torch.manual_seed(9)
    global_draw = strategy.scores(8, (6, 10), 0.6)
    torch.manual_seed(9)
    assert torch.equal(global_draw, strategy.scores(8, (6, 10), 0.6))
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_block_masking_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_num_patches"):
        BlockMasking(min_num_patches=0)
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMasking(min_aspect=2.0, max_aspect=1.0)


# ---------------------------------------------------------------------------- fixed masks: one generator per sample
@pytest.mark.parametrize("strategy", [RandomMasking(), BlockMasking(), GridMasking()], ids=repr)
def test_fixed_scores_depend_on_the_sample_id_alone(strategy):
    grid, ids = (4, 6), torch.tensor([4, 0, 11, 7])
    scores = strategy.fixed_scores(ids, grid, 0.75, seed=3)
    assert scores.shape == (4, 24) and scores.device.type == "cpu"
    assert torch.equal(scores, strategy.fixed_scores(ids, grid, 0.75, seed=3))
    # the same rows in another batch, in another order, one at a time
    assert torch.equal(strategy.fixed_scores(ids.flip(0), grid, 0.75, seed=3), scores.flip(0))
    assert torch.equal(strategy.fixed_scores(ids[2:3], grid, 0.75, seed=3), scores[2:3])
    assert torch.equal(scores[1], strategy.scores(1, grid, 0.75, "cpu", sample_generator(3, 0))[0])
    assert strategy.fixed_scores(torch.tensor([], dtype=torch.long), grid, 0.75, seed=3).shape == (0, 24)
    if not isinstance(strategy, GridMasking):  # the grid is the same for every sample and seed, by design
        assert not torch.equal(strategy.fixed_scores(ids, grid, 0.75, seed=4), scores)
        assert len({tuple(row) for row in hidden(scores, 0.75).tolist()}) == 4


def test_the_model_draws_fixed_noise_with_its_own_strategy():
    model = tiny_mae(img_size=(16, 24), masking=BlockMasking(min_num_patches=2))
    ids = torch.arange(5)
    expected = BlockMasking(min_num_patches=2).fixed_scores(ids, (4, 6), 0.75, seed=1)
    assert torch.equal(model.fixed_noise(ids, 0.75, seed=1), expected)
    # the reconstruction pictures draw the same masks as validation for the same seed
    assert torch.equal(fixed_mask_noise(model, 5, 0.75, seed=1), expected)


# ---------------------------------------------------------------------------- in the model
@pytest.mark.parametrize("strategy", [BlockMasking(), GridMasking()], ids=repr)
def test_any_strategy_runs_through_both_forward_paths(strategy):
    torch.manual_seed(0)
    model = tiny_mae(img_size=(16, 24), masking=strategy)
    imgs = torch.randn(6, 1, 16, 24)
    _, pred, mask = model(imgs, 0.75)
    assert pred.shape == (6, 24, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((6,), 18.0))
    noise = model.fixed_noise(torch.arange(6), 0.75, seed=0)
    loss, _, _ = model(imgs, 0.75, noise)
    fast, latent, _ = model.forward_train(imgs, 0.75, noise)
    torch.testing.assert_close(fast, loss)
    assert latent.shape == (6, 1 + 6, 32)


def test_the_strategy_adds_nothing_to_the_state_dict():
    plain = tiny_mae()
    blocks = tiny_mae(masking=BlockMasking())
    assert list(blocks.state_dict()) == list(plain.state_dict())
    blocks.load_state_dict(plain.state_dict(), strict=True)
    assert isinstance(plain.masking, RandomMasking)


# ---------------------------------------------------------------------------- through the command line
def test_the_cli_trains_validates_and_draws_with_the_chosen_strategy(tmp_path, monkeypatch):
    """`masking: BlockMasking` in the config reaches the training steps, val/loss, the pictures and the checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    strategy_calls = []  # (class name, batch size, drawn from a per-sample generator)
    for cls in (RandomMasking, BlockMasking):
        original = cls.scores

        def spy(self, n, *args, _original=original, **kwargs):
            strategy_calls.append((type(self).__name__, n, (args[3:] or [kwargs.get("generator")])[0] is not None))
            return _original(self, n, *args, **kwargs)

        monkeypatch.setattr(cls, "scores", spy)
    given_noise = []  # the noise of every masked forward that got one (validation and pictures)
    original_masking = MaskedAutoencoder._masking

    def record(self, imgs, mask_ratio, noise):
        if noise is not None:
            given_noise.append(noise.clone())
        return original_masking(self, imgs, mask_ratio, noise)

    monkeypatch.setattr(MaskedAutoencoder, "_masking", record)
    steps = 2
    cli = main(
        [
            "fit", "--config", QUICKSTART,
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16", "--data.init_args.img_size", "16",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(steps),
            "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--model.init_args.model.init_args.masking", '{"class_path": "mae_lightning.masking.BlockMasking"}',
            "--trainer.callbacks+", '{"class_path": "mae_lightning.ReconstructionCallback"}',
        ]
    )  # fmt: skip
    model = cli.model.model
    assert isinstance(model.masking, BlockMasking)
    assert not [call for call in strategy_calls if call[0] != "BlockMasking"]
    # training: one batch-wide draw from the global generator per step
    assert [call for call in strategy_calls if not call[2]] == [("BlockMasking", 16, False)] * steps
    # validation (16 images) and the pictures (8 images): the strategy's fixed masks of samples 0, 1, ...
    expected = BlockMasking().fixed_scores(torch.arange(16), model.grid_size, 0.75, seed=0)
    assert [tuple(noise.shape) for noise in given_noise] == [(16, 16), (8, 16)]
    assert torch.equal(given_noise[0], expected)
    assert torch.equal(given_noise[1], expected[:8])
    assert list(tmp_path.rglob("reconstructions/epoch=0000.png"))
    # the checkpoint rebuilds the module with its strategy
    checkpoint = sorted(tmp_path.rglob("*.ckpt"))[0]
    loaded = MAEPretraining.load_from_checkpoint(checkpoint)
    assert isinstance(loaded.model.masking, BlockMasking)


@pytest.mark.parametrize("grid", [(6, 6), (12, 12), (6, 12)])
def test_grid_masking_takes_the_ratio_its_documentation_writes(grid):
    """The docstring's 0.8888 (8/9 rounded down, as the kept count is) makes 3 x 3 cells on these grids."""
    assert GridMasking.cell_side(grid, 0.8888) == 3
    with pytest.raises(ValueError, match="0.8888"):
        GridMasking.cell_side(grid, 0.8889)  # keeps one patch fewer than the grid has cells
