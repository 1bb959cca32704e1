"""Checkpoints as W&B artifacts: recorded by an offline run, and read back from ``wandb:`` references.

Uploading and downloading need a W&B account and network; here the offline run's records are decoded,
a reference resolves from its already-downloaded copy without network, and without network a reference
that must be downloaded stops at once, in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_lightning.cli import main
from mae_lightning.runtime.wandb_artifacts import ArtifactUnavailableError, artifact_file
from tests.helpers import FAST_16PX, QUICKSTART, isolated_env, offline_run, wandb_records, without_network

REFERENCE = "wandb:someone/mae-lightning/model-abc123:latest"


def test_offline_run_records_its_checkpoint_as_a_model_artifact(wandb_home: Path):
    checkpoints = wandb_home / "checkpoints"
    callback = (
        '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
        f'"init_args": {{"dirpath": "{checkpoints}", "save_last": true}}}}]'
    )
    limits = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli, run = offline_run(wandb_home, *limits, "--trainer.callbacks", callback)
    records = list(wandb_records(next(run.glob("run-*.wandb"))))
    models = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    run_id = cli.trainer.logger.experiment.id
    # Both files of the ModelCheckpoint (the epoch's and last.ckpt) as versions of one artifact; the best
    # one carries `best`, each `latest` when it is logged.
    assert [m.name for m in models] == [f"model-{run_id}"] * 2
    assert sorted(sorted(m.aliases) for m in models) == [["best", "latest"], ["latest"]]
    best = cli.trainer.checkpoint_callback.best_model_path
    for model in models:
        files = {entry.path: Path(entry.local_path) for entry in model.manifest.contents}
        assert list(files) == ["model.ckpt"]  # staged on disk for `wandb sync`
        staged = torch.load(files["model.ckpt"], map_location="cpu", weights_only=False)
        assert staged["global_step"] == 2
        if "best" in model.aliases:
            assert json.loads(model.metadata)["original_filename"] == Path(best).name


def _downloaded(folder: Path, reference: str, files: dict[str, object]) -> Path:
    """Lay out ``files`` as a download of ``reference`` into ``folder`` would; returns the artifact's folder."""
    target = folder / reference.removeprefix("wandb:").replace("/", "__").replace(":", "__")
    target.mkdir(parents=True)
    for name, content in files.items():
        torch.save(content, target / name)
    return target


def test_an_artifact_downloaded_once_is_read_from_the_run_folder_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port: any network use would fail
    _downloaded(tmp_path, REFERENCE, {"model.ckpt": {}, "notes.pt": {}})
    assert artifact_file(REFERENCE, tmp_path).name == "model.ckpt"
    other = "wandb:someone/mae-lightning/encoder:v3"
    _downloaded(tmp_path, other, {"encoder.pth": {}})
    assert artifact_file(other, tmp_path).name == "encoder.pth"  # its only file
    ambiguous = "wandb:someone/mae-lightning/two:v0"
    _downloaded(tmp_path, ambiguous, {"a.pth": {}, "b.pth": {}})
    with pytest.raises(ArtifactUnavailableError, match="no single checkpoint file .*a.pth, b.pth"):
        artifact_file(ambiguous, tmp_path)


@pytest.mark.parametrize("reference", ["wandb:model-abc123:latest", "wandb:a/b/c", "wandb:a/b/c:v1/x"])
def test_a_malformed_reference_names_the_expected_form(reference, tmp_path):
    with pytest.raises(ArtifactUnavailableError, match=r"wandb:<entity>/<project>/<name>:<version or alias>"):
        artifact_file(reference, tmp_path)


def test_init_weights_from_an_artifact_downloaded_before(tmp_path, monkeypatch):
    """A pretraining run starts from an artifact's checkpoint already in <run folder>/artifacts, with no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    first = main(["fit", "--config", QUICKSTART, *FAST_16PX, "--trainer.fast_dev_run", "true"])
    folder = tmp_path / "runs" / "quickstart" / "artifacts"  # under the config's default_root_dir
    assert first.trainer.global_step == 1  # its weights moved away from the initialisation
    first.trainer.save_checkpoint(_downloaded(folder, REFERENCE, {}) / "model.ckpt")
    second = main(
        [
            "fit",
            "--config",
            QUICKSTART,
            *FAST_16PX,
            "--trainer.max_steps",
            "0",
            "--model.init_args.init_weights",
            REFERENCE,
        ]
    )
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("argument", ["--ckpt_path", "--model.init_args.init_weights"])
def test_without_network_an_artifact_reference_fails_at_once_in_one_line(argument, tmp_path):
    result = subprocess.run(
        [*without_network(), sys.executable, "-m", "mae_lightning", "fit", "--config", QUICKSTART, *FAST_16PX]
        + [argument, REFERENCE],
        cwd=tmp_path,
        env={**isolated_env(tmp_path), "WANDB_BASE_URL": "https://api.wandb.ai"},
        capture_output=True,
        text=True,
        timeout=60,  # wandb's own retries would take minutes
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(f"mae_lightning: error: {argument.removeprefix('--')}: W&B artifact '{REFERENCE}'")
    assert "cannot be reached" in lines[-1] and "give the checkpoint's file path" in lines[-1]
    assert not (tmp_path / "runs" / "checkpoints").exists()


def test_offline_mode_refuses_an_artifact_reference_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", QUICKSTART, *FAST_16PX, "--model.init_args.init_weights", REFERENCE])
    assert stop.value.code == 2
    assert "WANDB_MODE=offline" in capsys.readouterr().err.strip().splitlines()[-1]
