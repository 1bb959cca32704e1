"""Resuming from a checkpoint: it must read, and what you state wins over what it recorded.

Lightning's LightningCLI parses a checkpoint's hyperparameters over the config files and the command line
(Lightning-AI/pytorch-lightning#20801), so ``--ckpt_path ... --model.init_args.base_lr 3e-3`` trained on with the
old lr. Here the checkpoint's settings are defaults: a config file or the command line that states a setting wins,
and every setting that then differs from the checkpoint is said once, with both values. A change that alters the
shape of a tensor cannot be resumed; it stops in one line that says how to start a new run from the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule

from mae_lightning.checkpoint import Checkpoint, read_checkpoint


class ResumeError(Exception):
    """A checkpoint that cannot be resumed as asked: unreadable, or another architecture."""


def readable_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path`` (tensors left on disk), or a one-line error naming those beside it that read.

    Raises:
        ResumeError: the file cannot be read (truncated, not a checkpoint); the other ``.ckpt`` files of its
            folder that do read are named, newest first, and none is picked.
    """
    try:
        return _open(path)
    except (OSError, ValueError, RuntimeError) as err:
        cause = err.__cause__ or err  # torch's own words, not the reader's preamble
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        others = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        good = [str(other) for other in others if other != path and _reads(other)]
        hint = f"those in its folder that read, newest first: {', '.join(good)}" if good else "none in its folder reads"
        raise ResumeError(f"ckpt_path: {str(path)!r} cannot be read ({reason}); {hint}") from None


def _open(path: Path) -> Checkpoint:
    try:
        return read_checkpoint(path, mmap=True)
    except (OSError, ValueError, RuntimeError):
        # mmap needs torch's zip format: read again without it (an older format reads; a damaged file says why).
        return read_checkpoint(path)


def _reads(path: Path) -> bool:
    try:
        _open(path)
        return True
    except (OSError, ValueError, RuntimeError):
        return False


def settings_over_checkpoint(parser, config: Namespace, explicit: Namespace | None, checkpoint: Checkpoint) -> list:
    """Set the module's config (``config.model``) to the checkpoint's settings, then to what was stated over them.

    Args:
        parser: the subcommand's parser (it checks the checkpoint's settings as it checks a config file).
        config: the subcommand's parsed config; its ``model`` is replaced.
        explicit: what config files and the command line stated (no defaults), or None.
        checkpoint: the checkpoint being resumed.

    Returns:
        ``(key, checkpoint's value, value used)`` for every setting of the module that differs from the checkpoint.
    """
    hparams = {key: value for key, value in checkpoint.hparams.items() if key != "_instantiator"}
    if not hparams:
        return []
    if "_class_path" in hparams:  # written under LightningCLI: the module's class and its arguments (as Lightning)
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    recorded = parser.parse_object({"model": hparams}, config.clone()).model
    used = recorded.clone()
    stated = explicit.get("model") if explicit is not None else None
    if isinstance(stated, Namespace):
        for key, value in stated.items():
            used[key] = value
    config.model = used
    return [
        (f"model.{key}", value, used.get(key))
        for key, value in recorded.items()
        if key in used and _plain(used.get(key)) != _plain(value)
    ]


def _plain(value: Any) -> Any:
    # Lists and tuples compare as sequences (YAML gives lists where a signature says tuple).
    return list(value) if isinstance(value, tuple) else value


def check_same_architecture(module: LightningModule, checkpoint: Checkpoint, changes: list) -> None:
    """Stop in one line when the module built from the settings has other tensors, or shapes, than the checkpoint.

    Raises:
        ResumeError: naming the settings that changed and the tensors they reshape, and how to start a new run
            from the checkpoint's weights instead (the module's weights argument, without ``--ckpt_path``).
    """
    stored = checkpoint.contents.get("state_dict", {}) if isinstance(checkpoint.contents, dict) else {}
    built = module.state_dict()
    reshaped = [key for key, value in stored.items() if key not in built or value.shape != built[key].shape]
    reshaped += [key for key in built if key not in stored]
    if not reshaped:
        return
    shown = ", ".join(reshaped[:4]) + (f" and {len(reshaped) - 4} more" if len(reshaped) > 4 else "")
    # The network's own settings, when they changed; a module setting cannot reshape a tensor of the network.
    network = [change for change in changes if change[0].startswith("model.init_args.model.")] or changes
    changed = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in network) or "the model's settings"
    argument = getattr(module, "weights_argument", None)
    new_run = f"--model.init_args.{argument} {checkpoint.path}" if argument else "its weights"
    raise ResumeError(
        f"ckpt_path: {str(checkpoint.path)!r} cannot be resumed with another architecture ({changed}: {shown} "
        f"differ); to start a new run from its weights, use {new_run} without --ckpt_path"
    )
