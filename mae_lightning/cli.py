"""The command line: ``python -m mae_lightning {fit,validate,test,predict} --config configs/<x>.yaml``.

A thin LightningCLI: it links the image geometry of the data into the model (stated once, in
``data``), records the full resolved config with the run and in the logger, refuses to start an
online W&B run that could only hang, and turns configuration errors into one readable line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mae_lightning.classify import SHARDED_PROBE_MESSAGE
from mae_lightning.models.weights import ARCHITECTURE_KEYS, WeightsMismatchError, checkpoint_architecture
from mae_lightning.runtime import (
    AtomicCheckpointIO,
    CheckpointOnPreemption,
    KeepWandbRunId,
    LogSkippedImages,
    NonFiniteLossError,
    RNGStateCheckpoint,
    StopOnNonFiniteLoss,
)
from mae_lightning.runtime.wandb_artifacts import ArtifactUnavailableError, artifact_file, is_artifact_reference
from mae_lightning.runtime.wandb_resume import run_id_in_checkpoint

# Lines of jsonargparse's nested union report that say nothing to a user.
_NOISE = (
    "Does not validate against any of the",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
)


class ConfigError(Exception):
    """A setting was rejected by the constructor that received it."""


class WandbNotReadyError(ConfigError):
    """An online W&B run was asked for without the API key it needs to start."""


class MAETrainer(Trainer):
    """Lightning's Trainer, with ``limit_{train,val,test,predict}_batches`` written as an integer read as a count.

    Lightning annotates these ``float | int``; a parser that tries ``float`` first turns ``1`` into ``1.0``,
    which Lightning reads as 100% of the batches. Annotated ``int | float`` here, ``1`` means one batch and
    ``1.0`` (or ``0.25``) a share, as Lightning documents.
    """

    def __init__(
        self,
        *,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


class LoggedConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` in the run directory and send the same resolved config to the logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class MAECLI(LightningCLI):
    """LightningCLI for mae_lightning; ``img_size`` and ``in_chans`` are set in ``data`` only."""

    # The image geometry, stated in `data` and linked into the model.
    linked_geometry = ("img_size", "in_chans")

    def add_arguments_to_parser(self, parser) -> None:
        for name in self.linked_geometry:
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.model.init_args.{name}")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        check_wandb_can_start(config)
        fetch_artifact_references(config)
        drop_checkpoint_callbacks_when_off(config)
        checkpoint = resolve_ckpt_path(config)
        if checkpoint is not None:
            continue_wandb_run(config, checkpoint)
            forget_init_weights(config)
        elif config.get("ckpt_path") is None:
            check_weights_files_exist(config)
        take_architecture_from_checkpoint(config, checkpoint)
        refuse_sharded_linear_probe(config)
        name_wandb_run_after_config(config)
        if _wandb_loggers(config):
            # Added here, not in trainer_defaults: only a run with a W&B logger says where its run is.
            callbacks = self.trainer_defaults.get("callbacks") or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*callbacks, AnnounceWandbRun()]}

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default stages a checkpoint in the system temp folder (see checkpoint_io.py).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, ConnectionError, ModuleNotFoundError) as err:
            # jsonargparse wraps the constructor's own error, which names the setting: deepest in the
            # chain of causes, or (older jsonargparse) among the union alternatives in the message.
            chain = [err]
            while chain[-1].__cause__ is not None:
                chain.append(chain[-1].__cause__)
            messages = (one_line_error(str(e)) for e in reversed(chain))
            raise ConfigError(next((m for m in messages if m), str(err))) from None


def drop_checkpoint_callbacks_when_off(config) -> None:
    """``enable_checkpointing: false`` or ``fast_dev_run`` removes the config's ModelCheckpoint callbacks.

    Lightning refuses a ModelCheckpoint next to ``enable_checkpointing=False``, and in ``fast_dev_run``
    (which means to save nothing) 2.6 still writes ``last.ckpt`` at the end for one with ``save_last``.
    """
    trainer = config.get("trainer", {})
    callbacks = trainer.get("callbacks")
    if not callbacks or (trainer.get("enable_checkpointing") is not False and not trainer.get("fast_dev_run")):
        return
    trainer["callbacks"] = [c for c in callbacks if not str(getattr(c, "class_path", "")).endswith("ModelCheckpoint")]


def check_wandb_can_start(config) -> None:
    """Fail at once, with the fix, when an online W&B run has no API key to start with.

    Without a key wandb would stop at a login prompt (or fail deep inside the first step);
    offline mode (``trainer.logger.init_args.offline: true`` or ``WANDB_MODE=offline``) needs none.
    """
    for logger in _wandb_loggers(config):
        offline = bool(logger.init_args.get("offline")) or os.environ.get("WANDB_MODE") in ("offline", "disabled")
        if not offline and not _wandb_api_key_available():
            raise WandbNotReadyError(
                "the W&B logger is online but no W&B API key was found: run `wandb login`, "
                "set WANDB_API_KEY, or log offline with `--trainer.logger.init_args.offline true` "
                "(or WANDB_MODE=offline) and `wandb sync` later"
            )


def resolve_ckpt_path(config) -> Path | None:
    """The checkpoint file ``ckpt_path`` names, checked before anything is built or loaded.

    ``last`` is the ``last.ckpt`` in a configured ``ModelCheckpoint`` dirpath (None when there is none
    yet: a first start with ``--ckpt_path last`` trains from scratch, as Lightning does).

    Raises:
        ConfigError: an explicit ``ckpt_path`` that is not an existing file.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or "://" in str(ckpt_path):
        return None
    if ckpt_path == "last":
        callbacks = config.get("trainer", {}).get("callbacks") or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            dirpath = getattr(callback, "init_args", {}).get("dirpath") if hasattr(callback, "init_args") else None
            if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and dirpath:
                last = Path(dirpath) / "last.ckpt"
                if last.is_file():
                    return last
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path: checkpoint {str(path)!r} does not exist; give an existing .ckpt file, `last` "
            "(the last.ckpt in the ModelCheckpoint's dirpath), `best`, or leave it unset to start a new run"
        )
    return path


# Model arguments that name a weights file, read when the run sets the model up.
_WEIGHTS_ARGUMENTS = ("init_weights", "pretrained")


def fetch_artifact_references(config) -> None:
    """Replace each ``wandb:`` artifact reference among the weights arguments by its file, downloaded once.

    Downloaded into ``<default_root_dir>/artifacts/`` (rank 0 does it before it starts the other processes,
    which then find the file).
    """
    folder = Path(config.get("trainer", {}).get("default_root_dir") or "runs") / "artifacts"
    init_args = getattr(config.get("model"), "init_args", None) or {}
    settings = [("ckpt_path", config, "ckpt_path")]
    settings += [(f"model.init_args.{name}", init_args, name) for name in _WEIGHTS_ARGUMENTS]
    for key, holder, name in settings:
        if is_artifact_reference(holder.get(name)):
            try:
                holder[name] = str(artifact_file(holder[name], folder))
            except ArtifactUnavailableError as err:
                raise ConfigError(f"{key}: {err}") from None


def check_weights_files_exist(config) -> None:
    """Stop at once, in one line, when a weights file named in the model does not exist.

    Without this the run would build everything and fail when it sets the model up. Called only when no
    ``ckpt_path`` is given: a restored checkpoint replaces those weights and does not need the file.
    """
    init_args = getattr(config.get("model"), "init_args", None) or {}
    for name in _WEIGHTS_ARGUMENTS:
        path = init_args.get(name)
        if path and "://" not in str(path) and not Path(path).is_file():
            raise ConfigError(f"model.init_args.{name}: weights file {str(path)!r} does not exist")


def forget_init_weights(config) -> None:
    """A resumed pretraining run takes its weights from the checkpoint: ``init_weights`` is neither read nor needed.

    (The module would load the file before Lightning restores the checkpoint over it, and fail if the file
    has moved since the run started.) The classifiers' ``pretrained`` is kept: they defer reading it themselves.
    """
    init_args = getattr(config.get("model"), "init_args", None) or {}
    if init_args.get("init_weights"):
        init_args["init_weights"] = None


def refuse_sharded_linear_probe(config) -> None:
    """The linear probe under FSDP or model parallelism stops here, in one line (``LinearProbe.configure_model``)."""
    strategy = config.get("trainer", {}).get("strategy")
    name = str(getattr(strategy, "class_path", strategy) or "").lower()
    if str(getattr(config.get("model"), "class_path", "")).endswith("LinearProbe") and (
        "fsdp" in name or "modelparallel" in name
    ):
        raise ConfigError(SHARDED_PROBE_MESSAGE)


def take_architecture_from_checkpoint(config, checkpoint: Path | None) -> None:
    """Fill the encoder size a classifier's config leaves out from ``ckpt_path``, else from ``pretrained``.

    So probing or fine-tuning a checkpoint needs only its path: the size is declared once, where the
    encoder was trained. A stated size is kept (and must then match the checkpoint's tensors).
    """
    module_args = getattr(config.get("model"), "init_args", None) or {}
    vit = module_args.get("model")
    vit_args = getattr(vit, "init_args", None)
    if not str(getattr(vit, "class_path", "")).endswith("VisionTransformer") or vit_args is None:
        return
    unstated = [key for key in ARCHITECTURE_KEYS if key in vit_args and vit_args.get(key) is None]
    source = checkpoint or module_args.get("pretrained")
    if not unstated or not source:
        return  # nothing to fill, or nothing to fill it from: the model says which values are missing
    try:
        architecture = checkpoint_architecture(source)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"model.init_args.model: the encoder size is not stated and {err}") from None
    for key in unstated:
        vit_args[key] = architecture[key]


def continue_wandb_run(config, checkpoint: Path) -> None:
    """Give a W&B logger without an ``id`` the run id stored in ``checkpoint``, to continue that run."""
    wandb_loggers = [logger for logger in _wandb_loggers(config) if not logger.init_args.get("id")]
    if not wandb_loggers:
        return
    # mmap: only the few bytes of the callback states are read, not the weights.
    run_id = run_id_in_checkpoint(torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True))
    if run_id:
        for logger in wandb_loggers:
            logger.init_args["id"] = run_id
            logger.init_args["resume"] = "allow"


def _wandb_loggers(config) -> list:
    """The WandbLogger entries of the config's ``trainer.logger`` (one logger or a list)."""
    loggers = config.get("trainer", {}).get("logger")
    return [
        logger
        for logger in (loggers if isinstance(loggers, list) else [loggers])
        if str(getattr(logger, "class_path", "")).endswith("WandbLogger")
    ]


def name_wandb_run_after_config(config) -> None:
    """Name a W&B run without a ``name`` after the stem of the first ``--config`` file (``quickstart``).

    Left alone: a ``name`` set in YAML or on the command line, a run being continued (an ``id``, given or
    taken from the checkpoint: it keeps its name), and the runs of a sweep (``WANDB_SWEEP_ID``), which
    W&B names one by one.
    """
    config_files = config.get("config") or []
    if not config_files or os.environ.get("WANDB_SWEEP_ID"):
        return
    stem = Path(str(config_files[0])).stem
    for logger in _wandb_loggers(config):
        if not logger.init_args.get("name") and not logger.init_args.get("id"):
            logger.init_args["name"] = stem


def wandb_run_location(run) -> str:
    """One line that says where a started W&B run is: its URL, or offline its folder and the command that uploads it."""
    if run.offline:
        return f"W&B run {run.name!r} is offline in {run.sync_dir}; upload it with `wandb sync {run.sync_dir}`"
    return f"W&B run {run.name!r}: {run.url}"


class AnnounceWandbRun(Callback):
    """Print where the W&B run is once it has started (global rank zero, where the run lives)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning starts the loggers' experiments just before the callbacks' setup.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                rank_zero_info(wandb_run_location(logger.experiment))


def _wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def one_line_error(message: str) -> str:
    """Condense jsonargparse's nested report to the setting's path and what is wrong with it ("" if nothing is left)."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    details: list[str] = []
    for line in message.splitlines():
        line = line.strip().lstrip("- ").strip()
        if line and "Parser key" not in line and not line.startswith(_NOISE) and line not in details:
            details.append(line)
    if not details:
        return ""
    text = "; ".join(details)
    return f"{'.'.join(keys)}: {text}" if keys else text


def main(args: list[str] | None = None) -> MAECLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests call this in-process)."""
    try:
        cli = MAECLI(
            LightningModule,
            LightningDataModule,
            trainer_class=MAETrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggedConfigCallback,
            save_config_kwargs={"overwrite": True},
            # Always on: exact resume (random state, W&B run), a checkpoint on SIGTERM, a stop on a NaN loss,
            # the count of skipped image files.
            trainer_defaults={
                # Every file a run writes (logs, checkpoints, saved config, pictures) goes under its folder.
                "default_root_dir": "runs",
                "callbacks": [
                    RNGStateCheckpoint(),
                    KeepWandbRunId(),
                    CheckpointOnPreemption(),
                    StopOnNonFiniteLoss(),
                    LogSkippedImages(),
                ],
            },
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "prog": "python -m mae_lightning"},
            args=args,
        )
    except (ArgumentError, ConfigError) as err:
        print(f"mae_lightning: error: {one_line_error(str(err)) or str(err).strip()}", file=sys.stderr)
        raise SystemExit(2) from None
    except WeightsMismatchError as err:
        # Raised when the run sets the model up: weights that do not fit the model, named in one message.
        print(f"mae_lightning: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"mae_lightning: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except SIGTERMException:
        # The checkpoint is written (CheckpointOnPreemption); 128 + SIGTERM tells a scheduler the run did not finish.
        print("mae_lightning: stopped by SIGTERM; resume with `--ckpt_path last`", file=sys.stderr)
        raise SystemExit(143) from None
    leave_process_group()
    return cli


def leave_process_group() -> None:
    """After a finished multi-process command, every rank waits for the others and closes its connections.

    Lightning keeps the process group open after ``fit`` (a script may call the Trainer again). Left to the
    interpreter's exit, gloo's threads are torn down in no set order and now and then a process aborts
    ("terminate called without an active exception") after a run that ended well. (On an error Lightning
    closes the group itself.)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
