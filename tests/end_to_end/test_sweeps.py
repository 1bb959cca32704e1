"""The W&B sweeps in configs/sweeps/: each run's command line, as the agent builds it, is one the CLI accepts.

wandb's agent turns a run's parameters into ``--<name>=<value>`` flags (the ``${args}`` macro, built by
``wandb.sdk.launch.sweeps.utils.create_sweep_command_args``, the function the agent calls); the parameter
names must therefore be the CLI's keys. Each command is parsed here with ``--print_config`` in-process.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from mae_lightning.cli import main
from tests.helpers import REPO

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
# The metrics a run logs that a sweep may optimise, and the direction that is better.
LOGGED_METRICS = {"val/knn_top1": "maximize", "val/online_linear_top1": "maximize", "val/loss": "minimize"}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def sample_values(spec: dict) -> list:
    """Values of one sweep parameter to try: every listed value, or the ends and middle of a distribution."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution", "int_uniform" if isinstance(low, int) else "uniform")
    if distribution in ("log_uniform_values", "q_log_uniform_values"):
        return [low, math.sqrt(low * high), high]
    if distribution in ("int_uniform", "q_uniform"):
        return [low, (low + high) // 2, high]
    if distribution == "uniform":
        return [low, (low + high) / 2, high]
    raise AssertionError(f"no sample written for distribution {distribution!r}")


def runs_of(sweep: dict) -> list[dict]:
    """Parameter sets that together use every sampled value of every parameter (not the full grid)."""
    values = {name: sample_values(spec) for name, spec in sweep["parameters"].items()}
    count = max(len(v) for v in values.values())
    return [{name: v[i % len(v)] for name, v in values.items()} for i in range(count)]


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The ``fit`` arguments the agent runs: ``command`` with ``${args}`` expanded by wandb's own function.

    Config paths, relative to the repository root where the agent starts, are made absolute.
    """
    command = [str(c) for c in sweep["command"]]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "mae_lightning", "fit"], command
    assert command[-1] == "${args}", command
    flags = create_sweep_command_args({"args": {name: {"value": value} for name, value in params.items()}})["args"]
    rest = command[5:-1]
    rest = [str(REPO / arg) if prev == "--config" else arg for prev, arg in zip(["", *rest[:-1]], rest, strict=True)]
    return [*rest, *flags]


def dotted(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.fixture(autouse=True)
def _no_sweep_of_the_environment(run_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)


def test_the_two_sweeps_are_there():
    assert {p.name for p in SWEEPS} >= {"quickstart_grid.yaml", "cifar10_bayes.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=_rel)
def test_sweep_file_is_complete(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert {"method", "metric", "parameters", "command"} <= sweep.keys()
    assert sweep["method"] in ("grid", "random", "bayes")
    assert LOGGED_METRICS.get(sweep["metric"]["name"]) == sweep["metric"]["goal"], sweep["metric"]
    assert sweep["parameters"]
    command = [str(c) for c in sweep["command"]]
    configs = [arg for prev, arg in zip(command, command[1:], strict=False) if prev == "--config"]
    assert "configs/logger/wandb.yaml" in configs
    assert all((REPO / c).is_file() for c in configs), configs
    if sweep["method"] == "grid":
        assert all("values" in spec for spec in sweep["parameters"].values()), "a grid needs lists of values"


@pytest.mark.parametrize("path", SWEEPS, ids=_rel)
def test_every_swept_value_reaches_the_config(path: Path, capsys: pytest.CaptureFixture):
    sweep = yaml.safe_load(path.read_text())
    for params in runs_of(sweep):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *agent_command(sweep, params), "--print_config"])
        captured = capsys.readouterr()
        assert exit_info.value.code == 0, captured.err
        config = yaml.safe_load(captured.out)
        for name, value in params.items():
            assert dotted(config, name) == pytest.approx(value), name
        assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
        assert config["trainer"]["logger"]["init_args"]["name"] is None  # W&B names each run of a sweep


def test_the_sweeps_are_documented_on_the_wandb_page():
    page = (REPO / "docs" / "wandb.md").read_text()
    section = page.split("## Sweeps", 1)[1].split("\n## ", 1)[0]
    assert "wandb sweep configs/sweeps/quickstart_grid.yaml" in section
    assert "CUDA_VISIBLE_DEVICES=0 wandb agent" in section
