"""A checkpoint is never left half-written: an interrupted save leaves the previous file usable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_lightning.runtime.checkpoint_io import AtomicCheckpointIO


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((256, 256), value)}, "global_step": int(value)}


def _interrupting_save(obj, f, *args, **kwargs):
    """Stands in for torch.save: writes part of the bytes, then is interrupted (a kill, a full disk)."""
    f.write(b"PK\x03\x04 half a checkpoint")
    raise KeyboardInterrupt


def test_an_interrupted_save_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), path)
    monkeypatch.setattr(torch, "save", _interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(2.0), path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.full((256, 256), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_new_checkpoint_is_renamed_in_from_its_own_folder(tmp_path, monkeypatch):
    """A rename within one folder is atomic; a move from the system temp folder may be a copy."""
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst)))
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(3.0), path)
    assert len(renames) == 1 and Path(renames[0][0]).parent == path.parent and Path(renames[0][1]) == path
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 3


CHILD = """
import os, signal, sys, torch
from mae_lightning.runtime.checkpoint_io import AtomicCheckpointIO
path = sys.argv[1]
AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(512, 512)}, path)
def killed_mid_write(obj, f, *args, **kwargs):
    f.write(os.urandom(100_000))
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed_mid_write
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(512, 512)}, path)
"""


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr  # really killed, in the middle of the second save
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(512, 512))
