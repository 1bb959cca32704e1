"""Checkpoint files that are never half-written: write beside the target, fsync, then rename over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save a local checkpoint atomically: an interrupted save leaves the previous file untouched.

    Lightning's own save stages the bytes in the system temp folder and moves them over; when the
    checkpoint folder is on another file system (a cluster's shared disk) that move is a copy, and a
    job killed during it leaves a truncated ``last.ckpt``. Here the temporary file lives in the
    checkpoint's own folder, is flushed to disk, and ``os.replace`` swaps it in in one step. Remote
    paths (``s3://``, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            # KeyboardInterrupt and SystemExit too: never leave the partial file behind.
            Path(tmp_name).unlink(missing_ok=True)
            raise
        # Make the rename itself durable: a power loss must not bring back the old directory entry.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
