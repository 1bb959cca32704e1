"""The command line: ``python -m mae_lightning {fit,validate,test,predict} --config configs/<x>.yaml``.

A thin LightningCLI: it links the image geometry of the data into the model (stated once, in
``data``), records the full resolved config with the run and in the logger, refuses to start an
online W&B run that could only hang, and turns configuration errors into one readable line.
"""

from __future__ import annotations

import os
import re
import sys

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

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
        check_wandb_can_start(self.config.get(str(self.subcommand), self.config))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as err:
            # jsonargparse wraps the constructor's own error, which names the setting: deepest in the
            # chain of causes, or (older jsonargparse) among the union alternatives in the message.
            chain = [err]
            while chain[-1].__cause__ is not None:
                chain.append(chain[-1].__cause__)
            messages = (one_line_error(str(e)) for e in reversed(chain))
            raise ConfigError(next((m for m in messages if m), str(err))) from None


def check_wandb_can_start(config) -> None:
    """Fail at once, with the fix, when an online W&B run has no API key to start with.

    Without a key wandb would stop at a login prompt (or fail deep inside the first step);
    offline mode (``trainer.logger.init_args.offline: true`` or ``WANDB_MODE=offline``) needs none.
    """
    loggers = config.get("trainer", {}).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    for logger in loggers:
        class_path = getattr(logger, "class_path", "") or ""
        if not class_path.endswith("WandbLogger"):
            continue
        offline = bool(logger.init_args.get("offline")) or os.environ.get("WANDB_MODE") in ("offline", "disabled")
        if not offline and not _wandb_api_key_available():
            raise WandbNotReadyError(
                "the W&B logger is online but no W&B API key was found: run `wandb login`, "
                "set WANDB_API_KEY, or log offline with `--trainer.logger.init_args.offline true` "
                "(or WANDB_MODE=offline) and `wandb sync` later"
            )


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
        return MAECLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggedConfigCallback,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "prog": "python -m mae_lightning"},
            args=args,
        )
    except (ArgumentError, ConfigError) as err:
        print(f"mae_lightning: error: {one_line_error(str(err)) or str(err).strip()}", file=sys.stderr)
        raise SystemExit(2) from None
