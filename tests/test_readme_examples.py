"""The examples of docs/method.md ("Change the method"), run as written: each file saved, each command run (briefly)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from mae_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
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


def test_the_method_page_has_both_examples():
    assert sorted(EXAMPLES) == ["my_data.py", "my_masking.py"]


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
