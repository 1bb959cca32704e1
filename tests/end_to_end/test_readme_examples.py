"""The examples of docs/method.md ("Change the method"), run as written: each file saved, each command run (briefly).

A masking strategy, a loss term (extending the training step without copying it) and a DataModule of one's own.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from mae_lightning.cli import main
from tests.helpers import REPO

PAGE = (REPO / "docs" / "method.md").read_text()
# A marked Python block (the file a user saves), then the next bash block (the command that uses it).
EXAMPLE = re.compile(r"<!-- readme-example: (\S+) -->\n```python\n(.*?)```.*?```bash\n(.*?)```", re.DOTALL)
EXAMPLES = {name: (code, command) for name, code, command in EXAMPLE.findall(PAGE)}
# Short and quiet: the example's own settings stay as written, these only cut the run down.
BRIEF = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.init_args.num_workers", "0",
]  # fmt: skip


def test_the_method_page_has_its_three_examples():
    assert sorted(EXAMPLES) == ["my_data.py", "my_loss.py", "my_masking.py"]


def run_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code, command = EXAMPLES[name]
    (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "mae_lightning"], command
    args = [str(REPO / word) if word.startswith("configs/") else word for word in words[3:]]
    return main([*args, *BRIEF])


def test_custom_masking_strategy_trains_validates_and_draws(tmp_path, monkeypatch):
    cli = run_example("my_masking.py", tmp_path, monkeypatch)
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    masking = cli.model.model.masking
    assert type(masking).__name__ == "CentreMasking"
    # The centre patches are hidden and the outer ring is visible, in training and in the fixed masks.
    import torch

    from mae_lightning.masking import masking_order, num_kept

    grid = cli.model.model.grid_size
    keep = num_kept(grid[0] * grid[1], cli.model.mask_ratio)
    for scores in (
        masking.scores(2, grid, cli.model.mask_ratio),
        cli.model.model.fixed_noise(torch.arange(2), 0.75, 0),
    ):
        _, _, mask = masking_order(scores, keep)
        mask = mask.view(2, *grid)
        assert mask[:, grid[0] // 2, grid[1] // 2].eq(1).all() and mask[:, 0, 0].eq(0).all()


def test_custom_data_module_trains_on_five_bands(tmp_path, monkeypatch):
    cli = run_example("my_data.py", tmp_path, monkeypatch)
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    assert type(cli.datamodule).__name__ == "RandomBandsDataModule"
    imgs, targets = next(iter(cli.datamodule.train_dataloader()))
    assert imgs.shape == (64, 5, 16, 16) and set(targets.tolist()) <= {0, 1}
    assert cli.model.model.in_chans == 5


def test_an_added_term_is_trained_logged_and_validated_from_yaml(tmp_path, monkeypatch):
    cli = run_example("my_loss.py", tmp_path, monkeypatch)
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    model = cli.model.model
    assert type(model).__name__ == "VisibleLossAutoencoder" and model.visible_weight == 0.1
    metrics = cli.trainer.callback_metrics
    for key in ("train/visible_mse", "train/visible_loss", "val/visible_mse", "val/visible_loss", "val/loss"):
        assert torch.isfinite(metrics[key]), key

    # The loss optimised is the reconstruction loss plus the weighted term; the metric is the official
    # forward's loss on the visible patches.
    torch.manual_seed(0)
    model.eval()
    imgs = torch.randn(4, model.in_chans, *model.img_size)
    noise = torch.rand(4, model.num_patches)
    step = model.forward_train(imgs, 0.75, noise)
    model.visible_weight = 0.0  # the same step with the term as a metric only: the reconstruction loss alone
    reconstruction = model.forward_train(imgs, 0.75, noise)
    assert set(reconstruction.terms) == {"visible_mse"}
    torch.testing.assert_close(step.loss, reconstruction.loss + 0.1 * step.terms["visible_mse"])
    _, pred, mask = model(imgs, 0.75, noise)
    per_patch = ((pred - model.target(imgs)) ** 2).mean(dim=-1)
    torch.testing.assert_close(step.terms["visible_mse"], (per_patch * (1 - mask)).sum() / (1 - mask).sum())


def test_gradients_of_a_weighted_term_reach_the_decoder_and_a_metric_adds_none():
    namespace: dict = {}
    exec(compile(EXAMPLES["my_loss.py"][0], "my_loss.py", "exec"), namespace)
    sizes = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16)
    imgs, noise = torch.randn(2, 1, 16, 16), torch.rand(2, 16)
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = namespace["VisibleLossAutoencoder"](
            **sizes, decoder_depth=1, decoder_num_heads=2, visible_weight=weight
        )
        step = model.forward_train(imgs, 0.75, noise)
        assert set(step.terms) == ({"visible_mse"} if weight == 0 else {"visible_mse", "visible_loss"})
        assert step.terms["visible_mse"].requires_grad == (weight > 0)
        step.loss.backward()
        if weight == 0:
            reference = model.decoder_pred.weight.grad.clone()
    # The visible patches' loss changes the decoder's gradient only when it is weighted into the loss.
    assert not torch.allclose(model.decoder_pred.weight.grad, reference)
