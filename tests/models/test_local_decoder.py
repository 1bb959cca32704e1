"""Audio-MAE's local decoder (Huang et al., 2022): attention within Swin-style shifted windows of the patch grid.

The reference for the windows is the same block as one global attention with a mask that lets a token attend only
to the tokens of its window: with a shift ``s`` and window ``w``, rows ``r`` and ``r'`` share a window when
``(r - s) // w == (r' - s) // w`` (the cyclic shift's wrapped-around rows form their own group, as Swin's mask
keeps them apart), and likewise for columns. Padding does not appear in that reference at all.
"""

from __future__ import annotations

import pytest
import torch

from mae_lightning.models import MaskedAutoencoder
from mae_lightning.models.vit import Block, WindowAttentionBlock, _window_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors gain nothing from threads

DIM, HEADS = 16, 2
AUDIO = dict(
    img_size=(16, 64),
    patch_size=4,
    in_chans=1,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=2,
    decoder_num_heads=2,
)  # a 4 x 16 patch grid, as a spectrogram's (frequency x time)


def _block(window, shift=(0, 0), seed: int = 0) -> WindowAttentionBlock:
    torch.manual_seed(seed)
    block = WindowAttentionBlock(DIM, HEADS, window=window, shift=shift).eval()
    for p in block.parameters():  # random norms and biases too, so nothing is trivially symmetric
        torch.nn.init.normal_(p, std=0.3)
    return block


def _tokens(grid, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, grid[0] * grid[1], DIM, generator=torch.Generator().manual_seed(seed))


def _groups(size: int, window: int, shift: int) -> torch.Tensor:
    return torch.div(torch.arange(size) - shift, window, rounding_mode="floor")


def _masked_reference(block: WindowAttentionBlock, x, grid, window, shift) -> torch.Tensor:
    """The block as global attention with a (L, L) mask of same-window pairs: no windows, no roll, no padding."""
    rows = _groups(grid[0], window[0], shift[0])[:, None].expand(grid).reshape(-1)
    cols = _groups(grid[1], window[1], shift[1])[None, :].expand(grid).reshape(-1)
    mask = (rows[:, None] == rows[None, :]) & (cols[:, None] == cols[None, :])
    x = x + block.attn(block.norm1(x), mask)
    return x + block.mlp(block.norm2(x))


def _changed(block, x, grid, token) -> set[tuple[int, int]]:
    """The grid positions whose output changes, exactly, when the input at ``token`` changes."""
    y = x.clone()
    y[:, token[0] * grid[1] + token[1]] += 1.0
    with torch.no_grad():
        diff = (block(x, grid) != block(y, grid)).any(dim=-1).any(dim=0)
    return {divmod(i, grid[1]) for i in diff.nonzero().flatten().tolist()}


def _same_window(token, grid, window, shift) -> set[tuple[int, int]]:
    rows = _groups(grid[0], window[0], shift[0])
    cols = _groups(grid[1], window[1], shift[1])
    return {
        (r, c)
        for r in range(grid[0])
        for c in range(grid[1])
        if rows[r] == rows[token[0]] and cols[c] == cols[token[1]]
    }


# ---------------------------------------------------------------------------------------------- the block
@pytest.mark.parametrize("window", [(4, 6), (8, 8)])
def test_one_window_over_the_grid_is_a_block(window):
    """A window covering the grid (or larger, clamped; its shift then dropped) is global self-attention."""
    grid = (4, 6)
    local = _block(window, shift=(window[0] // 2, window[1] // 2) if window == (8, 8) else (0, 0))
    block = Block(DIM, HEADS).eval()
    block.load_state_dict(local.state_dict())
    assert set(local.state_dict()) == set(Block(DIM, HEADS).state_dict())
    x = _tokens(grid)
    with torch.no_grad():
        torch.testing.assert_close(local(x, grid), block(x), atol=1e-6, rtol=0)


def test_windows_are_local():
    """Window (2, 2), no shift: perturbing a token changes the outputs of its own window only, the rest bit for bit."""
    grid, window = (4, 6), (2, 2)
    block, x = _block(window), _tokens(grid)
    for token in [(0, 0), (1, 3), (2, 5), (3, 2)]:
        r, c = token[0] // 2 * 2, token[1] // 2 * 2
        assert _changed(block, x, grid, token) == {(r, c), (r, c + 1), (r + 1, c), (r + 1, c + 1)}


def test_shifted_windows_keep_the_wrap_apart():
    """Window (2, 2), shift (1, 1) on 4 x 6: after the roll, token (0, 0) shares its window with (0, 5), (3, 0)
    and the opposite corner (3, 5), which the mask keeps apart; its shifted window holds itself alone (its true
    neighbours (0, 1) and (1, 1) sit in other windows). An inner token's shifted window is the 2 x 2 block offset
    by the shift."""
    grid, window, shift = (4, 6), (2, 2), (1, 1)
    block, x = _block(window, shift), _tokens(grid)
    assert _changed(block, x, grid, (0, 0)) == {(0, 0)}
    assert _changed(block, x, grid, (3, 5)) == {(3, 5)}
    assert _changed(block, x, grid, (1, 1)) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert _changed(block, x, grid, (0, 1)) == {(0, 1), (0, 2)}
    assert _changed(block, x, grid, (3, 0)) == {(3, 0)}
    for token in [(r, c) for r in range(4) for c in range(6)]:
        assert _changed(block, x, grid, token) == _same_window(token, grid, window, shift), token


def test_without_the_mask_the_wrap_would_leak():
    """The check above has teeth: the same windows without Swin's mask let (0, 0) reach the opposite corner."""
    grid, window, shift = (4, 6), (2, 2), (1, 1)
    block, x = _block(window, shift), _tokens(grid)
    y = x.clone()
    y[:, 0] += 1.0
    n, d = x.shape[0], DIM

    def unmasked(t):  # roll, split into windows, attend with no mask, merge, roll back
        g = torch.roll(block.norm1(t).view(n, *grid, d), (-1, -1), dims=(1, 2))
        g = g.view(n, 2, 2, 3, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, d)
        g = block.attn(g).view(n, 2, 3, 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(n, *grid, d)
        return torch.roll(g, (1, 1), dims=(1, 2)).reshape(n, -1, d)

    with torch.no_grad():
        assert not torch.equal(unmasked(x)[:, -1], unmasked(y)[:, -1])
        assert torch.equal(block(x, grid)[:, -1], block(y, grid)[:, -1])


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((4, 6), (2, 2), (0, 0)),
        ((4, 6), (2, 2), (1, 1)),
        ((4, 6), (2, 3), (1, 1)),
        ((5, 7), (4, 4), (0, 0)),
        ((5, 7), (4, 4), (2, 2)),
        ((5, 7), (2, 3), (1, 2)),
        ((3, 9), (4, 4), (2, 2)),  # rows clamped to one window (shift dropped), columns padded and shifted
    ],
)
def test_windows_equal_masked_global_attention(grid, window, shift):
    """Padding, roll, windows and mask together equal one global attention restricted to same-window pairs."""
    block, x = _block(window, shift), _tokens(grid)
    ref_window = (min(window[0], grid[0]), min(window[1], grid[1]))
    ref_shift = tuple(0 if w >= g else s for w, g, s in zip(window, grid, shift, strict=True))
    with torch.no_grad():
        out = block(x, grid)
        ref = _masked_reference(block, x, grid, ref_window, ref_shift)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_padding_never_leaks_and_gradients_stay_finite():
    """5 x 7 with 4 x 4 windows shifted by 2: some padded queries have only padding in their region of a window.
    Every query may attend to itself, so no row of the mask is empty (an empty softmax row is NaN on some backends;
    this torch's CPU kernel happens to return zeros); real queries never see padding (the reference test above), and
    the gradients of every input and weight are finite."""
    grid = (5, 7)
    mask = _window_mask(grid, (8, 8), (4, 4), (2, 2), torch.device("cpu"))
    assert mask.shape == (4, 1, 16, 16) and mask.any(dim=-1).all()
    assert (mask.sum(dim=-1) == 1).any()  # a padded query alone in its region: the guard matters here
    block, x = _block((4, 4), (2, 2)), _tokens(grid).requires_grad_(True)
    out = block(x, grid)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_bad_window_or_shift_or_length_is_refused():
    with pytest.raises(ValueError, match="window"):
        WindowAttentionBlock(DIM, HEADS, window=(0, 4))
    with pytest.raises(ValueError, match="shift"):
        WindowAttentionBlock(DIM, HEADS, window=(2, 2), shift=(2, 0))
    with pytest.raises(ValueError, match="4 x 6"):
        _block((2, 2))(_tokens((4, 5)), (4, 6))


# ---------------------------------------------------------------------------------------------- the model
def test_local_decoder_forward_backward_and_keys():
    torch.manual_seed(0)
    model = MaskedAutoencoder(**AUDIO, decoder="local")
    assert [b.shift for b in model.decoder_blocks] == [(0, 0), (2, 2)]
    assert all(b.window == (4, 4) for b in model.decoder_blocks)
    imgs = torch.randn(2, 1, 16, 64)
    loss, pred, mask = model(imgs)
    assert pred.shape == (2, 64, 16) and mask.shape == (2, 64)
    assert torch.isfinite(loss)
    loss.backward()
    decoder = [
        (name, p)
        for name, p in model.named_parameters()
        if p.requires_grad and name.startswith(("decoder_", "mask_token"))
    ]
    assert {name.split(".")[0] for name, _ in decoder} == {
        "decoder_embed",
        "mask_token",
        "decoder_blocks",
        "decoder_norm",
        "decoder_pred",
    }
    missing = [name for name, p in decoder if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing

    torch.manual_seed(0)
    paper = MaskedAutoencoder(**AUDIO, decoder="self")
    assert list(model.state_dict()) == list(paper.state_dict())
    paper.load_state_dict(model.state_dict())  # the weights move between the two decoders


def test_local_decoder_forward_train_matches_forward():
    """forward_train (removed patches only) gives forward's loss in train and in eval mode: the decoder sees the
    whole grid either way."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(**AUDIO, decoder="local")
    imgs = torch.randn(2, 1, 16, 64)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(3))
    for train in (True, False):
        model.train(train)
        step = model.forward_train(imgs, 0.75, noise)
        loss, _, _ = model(imgs, 0.75, noise)
        assert step.latent.shape == (2, 1 + 16, 32)
        assert torch.isfinite(step.loss)
        torch.testing.assert_close(step.loss, loss, atol=1e-6, rtol=1e-5)
    model.train()
    model.forward_train(imgs).loss.backward()


def test_local_decoder_window_setting():
    torch.manual_seed(0)
    model = MaskedAutoencoder(**AUDIO, decoder="local", decoder_window=(2, 8))
    assert [b.shift for b in model.decoder_blocks] == [(0, 0), (1, 4)]
    loss, pred, _ = model(torch.randn(2, 1, 16, 64))
    assert pred.shape == (2, 64, 16) and torch.isfinite(loss)
    loss.backward()


def test_local_decoder_refuses_partial_reconstruction():
    with pytest.raises(ValueError) as error:
        MaskedAutoencoder(**AUDIO, decoder="local", decoder_keep_ratio=0.5)
    message = str(error.value)
    assert "\n" not in message and "decoder='local'" in message and "decoder_keep_ratio" in message
    with pytest.raises(ValueError, match="decoder_window"):
        MaskedAutoencoder(**AUDIO, decoder="local", decoder_window=(4, 0))
    with pytest.raises(ValueError, match="'local'"):
        MaskedAutoencoder(**AUDIO, decoder="windowed")
