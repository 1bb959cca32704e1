"""Checkpoints as W&B artifacts: uploaded (or, offline, recorded for ``wandb sync``) and read back by reference.

A weights argument (``--ckpt_path``, ``init_weights``, ``pretrained``) may name an artifact as
``wandb:<entity>/<project>/<name>:<version or alias>``, for example ``wandb:me/mae-lightning/model-1a2b3c4d:best``.
It is downloaded once into ``<run folder>/artifacts/`` and read from there afterwards (a later run with the
same reference needs no network). Without the W&B server it stops at once, in one line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

ARTIFACT_PREFIX = "wandb:"
# The file Lightning's WandbLogger stores a checkpoint under in a model artifact.
CHECKPOINT_FILE = "model.ckpt"


class ArtifactUnavailableError(Exception):
    """A W&B artifact reference that cannot be resolved to a local file."""


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, whose ``log_model`` also works offline.

    Online, checkpoints are uploaded as model artifacts named ``model-<run id>`` (aliases ``latest``, and
    ``best`` on the best checkpoint of the monitored metric): with ``log_model: true`` at the end of a
    successful run, with ``log_model: all`` as each is saved. Offline, Lightning refuses ``log_model``;
    here the artifacts are recorded in the offline run (the files staged on disk) and ``wandb sync``
    uploads them with the rest of the run.
    """

    def __init__(self, offline: bool = False, log_model: bool | Literal["all"] = False, **kwargs) -> None:
        super().__init__(offline=offline, log_model=False if offline else log_model, **kwargs)
        self._log_model = log_model


def artifact_file(reference: str, folder: Path) -> Path:
    """The checkpoint file of ``reference`` (``wandb:entity/project/name:alias``), downloaded once into ``folder``.

    Raises:
        ArtifactUnavailableError: the reference is malformed, W&B is offline or unreachable, or the
            artifact has no single checkpoint file.
    """
    name = reference.removeprefix(ARTIFACT_PREFIX)
    if not re.fullmatch(r"[^/:\s]+/[^/:\s]+/[^/:\s]+:[^/:\s]+", name):
        raise ArtifactUnavailableError(
            f"{reference!r} is not a W&B artifact reference; write wandb:<entity>/<project>/<name>:<version or alias>"
        )
    target = folder / name.replace("/", "__").replace(":", "__")
    if target.is_dir():
        return _checkpoint_in(target, reference)
    _check_wandb_reachable(reference)
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the target and renamed: processes started together never read a half-written file.
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".download-"))
    try:
        wandb.Api(timeout=30).artifact(name).download(root=str(staging))
    except Exception as err:  # wandb raises its own error types for every kind of failure
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactUnavailableError(f"W&B artifact {reference!r}: {_first_line(err)}") from None
    try:
        staging.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    return _checkpoint_in(target, reference)


def _checkpoint_in(folder: Path, reference: str) -> Path:
    """The artifact's checkpoint: ``model.ckpt`` (Lightning's name), else its only file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if (folder / CHECKPOINT_FILE).is_file():
        return folder / CHECKPOINT_FILE
    if len(files) == 1:
        return files[0]
    names = ", ".join(str(p.relative_to(folder)) for p in files) or "none"
    raise ArtifactUnavailableError(f"W&B artifact {reference!r} has no single checkpoint file (files: {names})")


def _check_wandb_reachable(reference: str) -> None:
    """Fail in one line, at once, when the W&B server cannot be used (instead of wandb's minutes of retries)."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise ArtifactUnavailableError(
            f"W&B artifact {reference!r} cannot be downloaded with WANDB_MODE={mode}; "
            "download it where the W&B server is reachable, or give the checkpoint's file path"
        )
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as err:
        raise ArtifactUnavailableError(
            f"W&B artifact {reference!r} needs the W&B server, and {url.hostname}:{port} cannot be reached "
            f"({err.strerror or err}); give the checkpoint's file path instead"
        ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
