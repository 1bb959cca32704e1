"""Resuming from a checkpoint: what you state wins over what it recorded, another architecture or an unreadable
file stops in one line. Real quickstart runs and checkpoints on disk (``runtime/resume.py``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from mae_lightning.cli import main
from mae_lightning.masking import num_kept
from tests.helpers import FAST_16PX, QUICKSTART, TESTS, tiny_model_args

STEPS = 2
# Two epochs of two steps: a resumed run takes the second.
SHORT = ["--trainer.limit_train_batches", str(STEPS), "--trainer.limit_val_batches", "1", "--trainer.logger", "false"]


@pytest.fixture(autouse=True)
def _cli_plugins_importable(run_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # cli_plugins


def fit(*extra: str, epochs: int = 1):
    return main(["fit", "--config", QUICKSTART, *FAST_16PX, *tiny_model_args(), *SHORT,
                 "--trainer.max_epochs", str(epochs), *extra])  # fmt: skip


def visible(folder: str) -> str:
    return (
        f'--trainer.callbacks+={{"class_path": "cli_plugins.VisiblePatches", "init_args": {{"dirpath": "{folder}"}}}}'
    )


@pytest.fixture
def checkpoint(run_in_tmp: Path) -> Path:
    """The quickstart's last.ckpt after one epoch at its own settings (mask ratio 0.75, base lr 1.5e-3)."""
    fit(visible("masks_first"))
    return run_in_tmp / "runs" / "quickstart" / "checkpoints" / "last.ckpt"


def test_a_resumed_run_trains_with_the_stated_lr_and_mask_ratio_and_says_so(checkpoint: Path, caplog):
    with caplog.at_level(logging.INFO):
        cli = main(["fit", "--config", QUICKSTART, *FAST_16PX, *tiny_model_args(), *SHORT, "--trainer.max_epochs",
                    "2", "--ckpt_path", str(checkpoint), "--model.init_args.mask_ratio", "0.9",
                    "--model.init_args.base_lr", "3e-3", visible("masks_resumed")])  # fmt: skip
    assert cli.trainer.global_step == 2 * STEPS and cli.model.mask_ratio == 0.9
    # The peak lr comes from the stated base lr (effective batch 16), not the checkpoint's 1.5e-3.
    assert cli.model.peak_lr == pytest.approx(3e-3 * 16 / 256)
    # The masks the resumed steps drew hide 90% of the 16 patches; the first run's hid 75%.
    patches = cli.model.model.num_patches
    first = [int(line.split()[1]) for line in Path("masks_first/rank0.txt").read_text().splitlines()]
    resumed = [int(line.split()[1]) for line in Path("masks_resumed/rank0.txt").read_text().splitlines()]
    assert first == [num_kept(patches, 0.75)] * STEPS and resumed == [num_kept(patches, 0.9)] * STEPS
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming with")]
    assert said == [
        "resuming with model.init_args.mask_ratio=0.9 (the checkpoint has 0.75)",
        "resuming with model.init_args.base_lr=0.003 (the checkpoint has 0.0015)",
    ]


def test_a_setting_stated_nowhere_comes_from_the_checkpoint_and_a_config_file_wins_over_it(checkpoint: Path):
    cli = fit("--ckpt_path", str(checkpoint), "--model.init_args.mask_ratio", "0.9",
              "--model.init_args.val_mask_seed", "7", epochs=2)  # fmt: skip
    again = fit("--ckpt_path", cli.trainer.checkpoint_callback.last_model_path, epochs=3)
    assert again.model.val_mask_seed == 7  # stated by nobody this time: the checkpoint's
    assert again.model.mask_ratio == 0.75  # the quickstart config states 0.75, over the checkpoint's 0.9


def test_another_width_stops_in_one_line_that_names_the_setting_and_the_way_to_start_anew(checkpoint: Path, capsys):
    for command in ("fit", "validate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", QUICKSTART, *FAST_16PX, *tiny_model_args(embed_dim=48), *SHORT,
                  "--ckpt_path", str(checkpoint)])  # fmt: skip
        assert exit_info.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert "cannot be resumed with another architecture" in line, line
        assert "model.init_args.model.init_args.embed_dim 32 -> 48" in line and "model.cls_token" in line, line
        assert f"--model.init_args.init_weights {checkpoint} without --ckpt_path" in line, line


def test_validate_takes_the_stated_evaluation_mask_ratio(checkpoint: Path):
    cli = main(["validate", "--config", QUICKSTART, *FAST_16PX, *tiny_model_args(), *SHORT,
                "--ckpt_path", str(checkpoint), "--model.init_args.eval_mask_ratio", "0.5"])  # fmt: skip
    assert cli.model.eval_mask_ratio == 0.5 and cli.model.mask_ratio == 0.75


def test_an_unreadable_checkpoint_names_the_ones_beside_it_that_read(checkpoint: Path, capsys):
    good = checkpoint.parent / "epoch=0-step=2.ckpt"
    assert good.is_file()
    damaged = checkpoint.parent / "damaged.ckpt"
    damaged.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # a save cut short
    shutil.copy(damaged, checkpoint.parent / "also_damaged.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        fit("--ckpt_path", str(damaged), epochs=2)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"mae_lightning: error: ckpt_path: {str(damaged)!r} cannot be read"), line
    named = line.split("newest first: ")[1].split(", ")
    assert sorted(named) == sorted([str(checkpoint), str(good)]) and "also_damaged" not in line, line
