"""The command line: ``python -m mae_lightning {fit,validate,test,predict} --config configs/<x>.yaml``."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class MAECLI(LightningCLI):
    """LightningCLI that links the image geometry of the data into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.img_size", "model.init_args.model.init_args.img_size")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.model.init_args.in_chans")


def main(args: list[str] | None = None) -> MAECLI:
    return MAECLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )
