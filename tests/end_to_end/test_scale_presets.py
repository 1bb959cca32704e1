"""The scale-out presets and launch scripts: what they build, and that the scripts run the shipped configs.

FSDP itself needs GPUs (Lightning and torch refuse it on CPU), so these tests check the objects the
preset builds; the 2-process DDP run on CPU is in end_to_end/test_distributed.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from mae_lightning.cli import main
from mae_lightning.models.vit import Block
from tests.helpers import REPO

PRESETS = REPO / "configs" / "presets"
SCRIPTS = sorted((REPO / "scripts").glob("*"))


def instantiate(type_, value):
    parser = ArgumentParser()
    parser.add_argument("--value", type=type_)
    return parser.instantiate(parser.parse_object({"value": value})).value


def test_fsdp_preset_wraps_and_checkpoints_each_transformer_block():
    preset = yaml.safe_load((PRESETS / "fsdp.yaml").read_text())["trainer"]
    strategy = instantiate(Strategy, preset["strategy"])
    assert type(strategy) is FSDPStrategy
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    for policy in (strategy.kwargs["auto_wrap_policy"], strategy._activation_checkpointing_kwargs["auto_wrap_policy"]):
        assert isinstance(policy, ModuleWrapPolicy)
        assert policy._module_classes == {Block}
    # The frozen sin-cos tables share FSDP units with trained tensors: that needs the original parameters.
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == "full"  # checkpoints load and export like DDP ones
    assert preset["precision"] == "bf16-mixed"


def test_slurm_preset_requeues_on_sigusr1():
    (plugin,) = yaml.safe_load((PRESETS / "slurm_requeue.yaml").read_text())["trainer"]["plugins"]
    environment = instantiate(SLURMEnvironment, plugin)
    assert environment.auto_requeue is True
    assert environment.requeue_signal == signal.SIGUSR1


# ViT-B's size file has 128 images per GPU: with this preset it takes --trainer.accumulate_grad_batches 1
# (docs/scaling.md).
@pytest.mark.parametrize("size", ["pretrain_vit_large.yaml", "pretrain_vit_huge.yaml"])
def test_multinode_preset_keeps_the_paper_batch(size, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs" / "imagenet" / "pretrain.yaml"),
                "--config",
                str(REPO / "configs" / "imagenet" / size),
                "--config",
                str(PRESETS / "multinode.yaml"),
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer, data = printed["trainer"], printed["data"]["init_args"]
    assert (trainer["num_nodes"], trainer["devices"], trainer["strategy"]) == (4, 8, "ddp")
    assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"] == 4096


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_run_the_shipped_configs(script: Path):
    text = script.read_text()
    configs = re.findall(r"--config (\S+)", text)
    assert configs, f"{script.name} runs no config"
    for config in configs:
        assert (REPO / config).is_file(), f"{script.name} names {config}, which does not exist"
    assert "-m mae_lightning fit" in text
    assert "--trainer.num_nodes" in text and "--trainer.devices" in text
    if script.suffix == ".sbatch":
        assert "srun python -m mae_lightning fit" in text
        assert "#SBATCH --signal=SIGUSR1@" in text
        # One SLURM task per GPU, as Lightning's SLURM environment expects.
        assert re.search(r"--ntasks-per-node=(\d+)", text).group(1) == re.search(r"--gpus-per-node=(\d+)", text).group(
            1
        )
    else:
        assert "torchrun" in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_the_scaling_page_shows_both_launchers():
    page = (REPO / "docs" / "scaling.md").read_text()
    for script in SCRIPTS:
        assert f"scripts/{script.name}" in page
    assert "srun python -m mae_lightning fit" in page
    assert "torchrun" in page
