"""The command line: ``python -m mae_lightning {fit,validate,test,predict} --config configs/<x>.yaml``.

A thin LightningCLI: it links the image geometry of the data into the model (stated once, in ``data``), records
the full resolved config in the run's folder and in the logger, resolves the files a run starts from
(``ckpt_path``, W&B artifact references, an encoder size left to a checkpoint) before anything is built, and turns
configuration errors into one readable line. What W&B needs before a run starts is in ``runtime/wandb_run.py``.
Entries of the config are recognised by their class (a subclass behaves as its parent), never by name.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mae_lightning.checkpoint import WeightsMismatchError, read_checkpoint
from mae_lightning.classify import SHARDED_PROBE_MESSAGE, LinearProbe
from mae_lightning.models.classifier import VisionTransformer
from mae_lightning.models.presets import ENCODER_SIZE_KEYS, encoder_size
from mae_lightning.models.transformers_io import transformers_folder_of, weights_file_in
from mae_lightning.recipe import SetupError
from mae_lightning.runtime import (
    AtomicCheckpointIO,
    CheckpointOnPreemption,
    KeepWandbRunId,
    LogSkippedImages,
    NonFiniteLossError,
    RNGStateCheckpoint,
    StopOnNonFiniteLoss,
)
from mae_lightning.runtime.hub import HUB_PREFIX, HubUnavailableError, hub_weights
from mae_lightning.runtime.resume import (
    ResumeError,
    check_same_architecture,
    readable_checkpoint,
    settings_over_checkpoint,
)
from mae_lightning.runtime.wandb_artifacts import ARTIFACT_PREFIX, ArtifactUnavailableError, artifact_file
from mae_lightning.runtime.wandb_run import (
    AnnounceWandbRun,
    WandbNotReadyError,
    check_wandb_can_start,
    continue_wandb_run,
    name_wandb_run_after_config,
)

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
    """Save ``config.yaml`` in the run's own folder and send the same resolved config to the logger.

    The run's folder is the logger's (``<save_dir>/<name>/version_<n>``), the ``default_root_dir`` without a
    logger, and with a W&B logger the W&B run's own folder (``<save_dir>/wandb/<run>/files``, uploaded with the
    run): Lightning's choice there, the ``save_dir`` itself, is shared by every W&B run under it.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.save_to_log_dir = False  # saved by save_config, into the folder chosen here
        self._log_dir = trainer.log_dir  # on every process: it is broadcast
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = next((lg.experiment.dir for lg in trainer.loggers if isinstance(lg, WandbLogger)), self._log_dir)
        os.makedirs(folder, exist_ok=True)
        config_path = os.path.join(folder, self.config_filename)
        self.parser.save(self.config, config_path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
        config = yaml.safe_load(self.parser.dump(self.config))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class MAECLI(LightningCLI):
    """LightningCLI for mae_lightning; ``img_size`` and ``in_chans`` are set in ``data`` only."""

    # The image geometry, stated in `data` and linked into the model.
    linked_geometry = ("img_size", "in_chans")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self._args = args  # parsed again without defaults when a checkpoint is resumed (see resume_settings)

    def _parse_ckpt_path(self) -> None:
        """Lightning parses the checkpoint's settings over the command line here; see ``runtime/resume.py``."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in self.linked_geometry:
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.model.init_args.{name}")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        wandb_loggers = [
            entry for entry in _as_list(config.get("trainer", {}).get("logger")) if _is(entry, WandbLogger)
        ]
        for logger in wandb_loggers:
            check_wandb_can_start(logger.init_args)
        fetch_artifact_references(config)
        drop_checkpoint_callbacks_when_off(config)
        place_outputs_in_run_folder(config)
        checkpoint = resolve_ckpt_path(config)
        self._resumed, self._changes = None, []
        if checkpoint is not None:
            self.resume_settings(config, checkpoint)
            continue_wandb_run(wandb_loggers, checkpoint)
            forget_init_weights(config)
        elif config.get("ckpt_path") is None:
            check_weights_files_exist(config)
        take_architecture_from_checkpoint(config, checkpoint)
        refuse_sharded_linear_probe(config)
        name_wandb_run_after_config(wandb_loggers, config.get("config") or [])
        callbacks = _as_list(self.trainer_defaults.get("callbacks"))
        if any(_is(entry, StopOnNonFiniteLoss) for entry in _as_list(config.get("trainer", {}).get("callbacks"))):
            # The config's own non-finite-loss policy (a rollback) replaces the default stop.
            callbacks = [callback for callback in callbacks if not isinstance(callback, StopOnNonFiniteLoss)]
        if wandb_loggers:  # only a run with a W&B logger says where its run is
            callbacks = [*callbacks, AnnounceWandbRun()]
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}

    def resume_settings(self, config, checkpoint: Path) -> None:
        """The resumed checkpoint's settings under what config files and the command line state (runtime/resume.py)."""
        self._resumed = readable_checkpoint(checkpoint)
        stated = self.parser.parse_args(self._args, defaults=False) if isinstance(self._args, list | None) else None
        subcommand = str(self.subcommand)
        stated = stated.get(subcommand) if stated is not None else None
        self._changes = settings_over_checkpoint(self._parser(subcommand), config, stated, self._resumed)
        for key, recorded, used in self._changes:
            rank_zero_info(f"resuming with {key}={used!r} (the checkpoint has {recorded!r})")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default stages a checkpoint in the system temp folder (see checkpoint_io.py).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            if self._resumed is not None:
                check_same_architecture(self.model, self._resumed, self._changes)
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
    trainer["callbacks"] = [c for c in _as_list(callbacks) if not _is(c, ModelCheckpoint)]


def place_outputs_in_run_folder(config) -> None:
    """Loggers and checkpoints that name no folder of their own write into ``trainer.default_root_dir``.

    So a config states its run folder once. A logger without ``save_dir``, or with ``.`` (W&B's default; the
    CSV logger needs a value to parse), logs into the run's folder, never at the top of the working directory.
    A ModelCheckpoint without ``dirpath`` saves into ``<default_root_dir>/checkpoints``, a fixed folder where
    ``--ckpt_path last`` and the evaluation configs find ``last.ckpt`` (Lightning's own default is a versioned
    folder inside the logger's). Called before ``resolve_ckpt_path``, which reads that dirpath.
    """
    trainer = config.get("trainer", {})
    run_folder = str(trainer.get("default_root_dir") or "runs")
    for logger in _as_list(trainer.get("logger")):
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") in (None, "."):
            init_args["save_dir"] = run_folder
    for callback in _as_list(trainer.get("callbacks")):
        if _is(callback, ModelCheckpoint) and callback.init_args.get("dirpath") is None:
            callback.init_args["dirpath"] = str(Path(run_folder) / "checkpoints")


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
        for callback in _as_list(config.get("trainer", {}).get("callbacks")):
            dirpath = callback.init_args.get("dirpath") if _is(callback, ModelCheckpoint) else None
            if dirpath:
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
    """Replace each weights reference by its local file, downloaded once (see :func:`resolve_weights_reference`).

    ``wandb:`` artifacts go into ``<default_root_dir>/artifacts/``, ``hf:`` Hub repositories into
    ``<default_root_dir>/hub/`` (rank 0 does it before it starts the other processes, which then find the file).
    """
    root = Path(config.get("trainer", {}).get("default_root_dir") or "runs")
    init_args = getattr(config.get("model"), "init_args", None) or {}
    settings = [("ckpt_path", config, "ckpt_path")]
    settings += [(f"model.init_args.{name}", init_args, name) for name in _WEIGHTS_ARGUMENTS]
    for key, holder, name in settings:
        try:
            resolved = resolve_weights_reference(holder.get(name), root, weights_only=name != "ckpt_path")
        except (ArtifactUnavailableError, HubUnavailableError) as err:
            raise ConfigError(f"{key}: {err}") from None
        if resolved is not None:
            holder[name] = str(resolved)


# Reference prefix -> the run folder's sub-folder it is downloaded into, and the function that does it.
_REFERENCE_RESOLVERS = {ARTIFACT_PREFIX: ("artifacts", artifact_file), HUB_PREFIX: ("hub", hub_weights)}


def resolve_weights_reference(value: object, root: Path, weights_only: bool = True) -> Path | None:
    """The local file of a weights setting's value, or None when it is already one (or unset).

    ``wandb:<entity>/<project>/<name>:<alias>`` (``runtime/wandb_artifacts.py``) and ``hf:<repo id>[@revision]``
    (``runtime/hub.py``) are downloaded once under ``root``; a transformers folder becomes its weights file
    (the reader finds ``config.json`` beside it). Hub repositories and transformers folders hold weights, not
    training states: ``weights_only=False`` (``ckpt_path``) refuses them.

    Raises:
        ArtifactUnavailableError, HubUnavailableError: the reference cannot be resolved, with the reason in one line.
    """
    if not isinstance(value, str):
        return None
    for prefix, (subfolder, resolve) in _REFERENCE_RESOLVERS.items():
        if value.startswith(prefix):
            if prefix == HUB_PREFIX and not weights_only:
                raise HubUnavailableError(
                    f"{value!r} holds weights, not a training checkpoint to resume: start from it with "
                    "model.init_args.init_weights (pretraining) or model.init_args.pretrained (classifiers)"
                )
            return resolve(value, root / subfolder)
    folder = transformers_folder_of(value) if weights_only and Path(value).is_dir() else None
    return weights_file_in(folder) if folder is not None else None


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
    # A strategy given by its registered name ("fsdp", "fsdp_cpu_offload", ...) or by class.
    sharded = _is(strategy, (FSDPStrategy, ModelParallelStrategy)) or (
        isinstance(strategy, str) and ("fsdp" in strategy.lower() or "modelparallel" in strategy.lower())
    )
    if sharded and _is(config.get("model"), LinearProbe):
        raise ConfigError(SHARDED_PROBE_MESSAGE)


def take_architecture_from_checkpoint(config, checkpoint: Path | None) -> None:
    """Fill the encoder size a classifier's config leaves out from ``ckpt_path``, else from ``pretrained``.

    So probing or fine-tuning a checkpoint needs only its path: the size is declared once, where the
    encoder was trained. A stated size is kept (and must then match the checkpoint's tensors).
    """
    module_args = getattr(config.get("model"), "init_args", None) or {}
    vit = module_args.get("model")
    if not _is(vit, VisionTransformer):
        return
    vit_args = vit.init_args
    unstated = [key for key in ENCODER_SIZE_KEYS if key in vit_args and vit_args.get(key) is None]
    source = checkpoint or module_args.get("pretrained")
    if not unstated or not source:
        return  # nothing to fill, or nothing to fill it from: the model says which values are missing
    try:
        architecture = encoder_size(read_checkpoint(source))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"model.init_args.model: the encoder size is not stated and {err}") from None
    for key in unstated:
        vit_args[key] = architecture[key]


def _is(entry, classes: type | tuple[type, ...]) -> bool:
    """Whether a config entry (``class_path`` + ``init_args``) names one of ``classes`` or a subclass of one."""
    class_path = getattr(entry, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # the parser has already said whether the class exists
    return isinstance(cls, type) and issubclass(cls, classes)


def _as_list(value) -> list:
    """A config value that may be one entry or a list of them, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


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
    except (ArgumentError, ConfigError, WandbNotReadyError, ResumeError) as err:
        print(f"mae_lightning: error: {one_line_error(str(err)) or str(err).strip()}", file=sys.stderr)
        raise SystemExit(2) from None
    except (WeightsMismatchError, SetupError) as err:
        # Raised when the run sets the model up: weights that do not fit the model, a head that does not fit the data.
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
