"""Hyperparameters that let a checkpoint rebuild its LightningModule, model included."""

from __future__ import annotations

import inspect

from lightning.pytorch import LightningModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn


def save_module_hparams(module: LightningModule, model: nn.Module) -> None:
    """Call in ``__init__`` of a module whose first argument is ``model``.

    Under LightningCLI the hyperparameters are the parsed config (the model as class_path +
    init_args), so a checkpoint rebuilds the whole module alone; a module built in Python keeps
    the other arguments (pass ``model=`` again to ``load_from_checkpoint``). The CLI links
    ``img_size`` and ``in_chans`` from ``data`` and leaves link targets out of its config, so the
    geometry of the model actually built is written in, or a reload would build a 224 px RGB model
    (``hparams`` goes into checkpoints, ``_hparams_initial`` to the loggers).
    """
    from_cli = _given_hyperparameters.get() is not None
    # save_hyperparameters reads the constructor's arguments from the frame of the calling __init__.
    init_frame = inspect.currentframe().f_back
    module.save_hyperparameters(ignore=None if from_cli else ["model"], frame=init_frame)
    for hparams in (module.hparams, module._hparams_initial):
        if isinstance(hparams.get("model"), dict):
            geometry = {"img_size": list(model.img_size), "in_chans": model.in_chans}
            hparams["model"].setdefault("init_args", {}).update(geometry)
