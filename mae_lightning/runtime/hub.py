"""Weights on the Hugging Face Hub: ``hf:<repo id>[@revision]`` references read once, and folders published.

A weights argument (``init_weights``, ``pretrained``) may name a Hub model repository as ``hf:<owner>/<name>``,
optionally at a revision (branch, tag or commit): ``hf:facebook/vit-mae-base``, ``hf:me/mae-cifar@v1``. The
repository's ``config.json`` and weights are downloaded once with ``huggingface_hub.snapshot_download`` into
``<run folder>/hub/<owner>__<name>@<revision>/`` and read from there afterwards, without the network. Offline
(``HF_HUB_OFFLINE=1``), unreachable, private without a token, gated or missing: one line, at once.

Needs the ``hub`` extra (``pip install "mae-lightning[hub]"``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

HUB_PREFIX = "hf:"
# What a reference may hold: <owner>/<name> as the Hub spells repository ids, and a revision without spaces.
_REFERENCE = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[^\s@]+))?")
# The files a weights reference needs (the model card and other files stay on the Hub); the PyTorch weights only
# where a repository has no safetensors (older ones).
_WEIGHTS_PATTERNS = ["config.json", "model.safetensors"]
_OLDER_WEIGHTS_PATTERNS = ["pytorch_model.bin"]
_INSTALL = 'pip install "mae-lightning[hub]"'


class HubUnavailableError(ValueError):
    """A Hub reference that cannot be resolved, or a folder that cannot be published."""


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``hf:owner/name@rev`` -> (``owner/name``, ``rev``); the revision is None when not given (the main branch).

    Raises:
        HubUnavailableError: not a reference of that form.
    """
    match = _REFERENCE.fullmatch(reference.removeprefix(HUB_PREFIX))
    if not reference.startswith(HUB_PREFIX) or match is None:
        raise HubUnavailableError(
            f"{reference!r} is not a Hugging Face Hub reference; "
            "write hf:<owner>/<name> or hf:<owner>/<name>@<revision>"
        )
    return match["repo"], match["revision"]


def hub_cache_folder(reference: str, folder: Path) -> Path:
    """Where ``reference`` is kept under ``folder``: ``<owner>__<name>@<revision or main>``."""
    repo, revision = parse_hub_reference(reference)
    return folder / f"{repo.replace('/', '__')}@{revision or 'main'}"


def hub_weights(reference: str, folder: Path) -> Path:
    """The weights file of ``reference`` (``model.safetensors``, else ``pytorch_model.bin``; ``config.json`` beside
    it), downloaded once into ``folder``.

    Raises:
        HubUnavailableError: malformed reference, ``huggingface_hub`` not installed, offline or unreachable,
            repository missing, private without a token, gated, or without transformers weights.
    """
    from mae_lightning.models.transformers_io import weights_file_in

    repo, revision = parse_hub_reference(reference)
    target = hub_cache_folder(reference, folder)
    if (target / "config.json").is_file() and weights_file_in(target) is not None:
        return weights_file_in(target)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise HubUnavailableError(f"Hub reference {reference!r} needs huggingface_hub: {_INSTALL}") from None
    if _offline():
        raise HubUnavailableError(
            f"Hub reference {reference!r} cannot be downloaded with HF_HUB_OFFLINE set; download it where the Hub "
            f"is reachable (into {target}), or give the path of a transformers folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the target and renamed: processes started together never read a half-written folder.
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".download-"))
    try:
        snapshot_download(repo, revision=revision, local_dir=staging, allow_patterns=_WEIGHTS_PATTERNS, etag_timeout=10)
        if not (staging / "model.safetensors").is_file():
            snapshot_download(
                repo, revision=revision, local_dir=staging, allow_patterns=_OLDER_WEIGHTS_PATTERNS, etag_timeout=10
            )
    except GatedRepoError:
        why = "is gated: accept its conditions on the Hub and log in (hf auth login, or HF_TOKEN)"
    except RepositoryNotFoundError:
        why = "does not exist, or is private and no token with access is set (hf auth login, or HF_TOKEN)"
    except RevisionNotFoundError:
        why = f"has no revision {revision!r}"
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:  # offline, or the Hub unreachable
        why = f"cannot be downloaded, the Hub is offline or unreachable ({_first_line(err)})"
    except Exception as err:  # the HTTP library's and the OS's connection errors come in many classes
        why = f"cannot be downloaded ({type(err).__name__}: {_first_line(err)})"
    else:
        why = None
    if why is None and (weights_file_in(staging) is None or not (staging / "config.json").is_file()):
        why = "is not a transformers model: it lacks config.json, or model.safetensors and pytorch_model.bin"
    if why is not None:
        shutil.rmtree(staging, ignore_errors=True)
        raise HubUnavailableError(
            f"Hub reference {reference!r} {why}; give the path of a downloaded transformers folder instead"
        )
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    return weights_file_in(target)


def push_folder(folder: Path, repo_id: str, commit_message: str) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created private when missing) in one commit.

    Nothing is sent without a token; the upload is one ``upload_folder`` commit, so a failure leaves the
    repository as it was (at most created, empty).

    Returns:
        The URL of the commit.

    Raises:
        HubUnavailableError: ``huggingface_hub`` not installed, no token, offline or unreachable, no access.
    """
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise HubUnavailableError(f"--push_to_hub needs huggingface_hub: {_INSTALL}") from None
    if get_token() is None:
        raise HubUnavailableError(
            f"--push_to_hub {repo_id}: no Hugging Face token; log in (hf auth login) or set HF_TOKEN. "
            f"Nothing was uploaded; the folder {folder} is written"
        )
    if _offline():
        raise HubUnavailableError(
            f"--push_to_hub {repo_id}: HF_HUB_OFFLINE is set. Nothing was uploaded; the folder {folder} is written"
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except Exception as err:  # HTTP status, connection and OS errors, from the Hub client and its HTTP library
        raise HubUnavailableError(
            f"--push_to_hub {repo_id}: {type(err).__name__}: {_first_line(err)}. "
            f"Nothing was uploaded; the folder {folder} is written"
        ) from None
    return str(getattr(commit, "commit_url", commit))


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (read here too: the library reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
