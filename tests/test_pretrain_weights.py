"""MAEPretraining's init_weights (continued pretraining), compile switch and the record of the effective batch."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from mae_lightning import MAEPretraining, MaskedAutoencoder
from mae_lightning.checkpoint import ENCODER_KEYS
from mae_lightning.cli import main
from tests.helpers import REPO, digits, tiny_mae


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


class WeightsAtStart(Callback):
    """The model's weights when training starts (after init_weights and any resume)."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def fit_and_capture(tmp_path, module, ckpt_path=None, **kwargs) -> dict:
    capture = WeightsAtStart()
    trainer(tmp_path, callbacks=[capture], **kwargs).fit(module, digits(), ckpt_path=ckpt_path)
    return capture.state


def assert_same(got: dict, want: dict, keys) -> None:
    for key in keys:
        assert torch.equal(got[key], want[key]), key


def test_continues_from_an_official_full_file(tmp_path):
    source = tiny_mae(seed=0).state_dict()
    path = tmp_path / "mae_full.pth"
    torch.save({"model": source}, path)
    module = MAEPretraining(tiny_mae(seed=1), init_weights=str(path), warmup_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="init_weights")
        start = fit_and_capture(tmp_path, module)
    assert_same(start, source, source.keys())


def test_continues_from_an_official_encoder_file_with_a_fresh_decoder(tmp_path):
    source = tiny_mae(seed=0).state_dict()
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": {k: v for k, v in source.items() if k.startswith(ENCODER_KEYS)}}, path)
    fresh = tiny_mae(seed=1)
    fresh_state = {k: v.clone() for k, v in fresh.state_dict().items()}
    module = MAEPretraining(fresh, init_weights=str(path), warmup_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="init_weights")  # the missing decoder is the plan: no warning
        start = fit_and_capture(tmp_path, module)
    encoder = [k for k in source if k.startswith(ENCODER_KEYS)]
    decoder = [k for k in source if k not in encoder]
    assert decoder and encoder
    assert_same(start, source, encoder)
    assert_same(start, fresh_state, decoder)


def test_a_finetuned_file_warns_with_the_keys_it_could_not_use(tmp_path):
    state = {k: v for k, v in tiny_mae(seed=0).state_dict().items() if k.startswith(ENCODER_KEYS)}
    state["head.weight"], state["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    path = tmp_path / "mae_finetuned.pth"
    torch.save({"model": state}, path)
    module = MAEPretraining(tiny_mae(seed=1), init_weights=str(path), warmup_epochs=1)
    expected = r"init_weights: .*unexpected in the file \(ignored\): head\.weight, head\.bias"
    with pytest.warns(UserWarning, match=expected):
        fit_and_capture(tmp_path, module)


def test_a_resumed_checkpoint_wins_over_init_weights(tmp_path):
    first = MAEPretraining(tiny_mae(seed=2), warmup_epochs=1)
    t = trainer(tmp_path)
    t.fit(first, digits())
    t.save_checkpoint(tmp_path / "run.ckpt")
    torch.save({"model": tiny_mae(seed=0).state_dict()}, tmp_path / "full.pth")

    resumed = MAEPretraining(tiny_mae(seed=1), init_weights=str(tmp_path / "full.pth"), warmup_epochs=1)
    start = fit_and_capture(tmp_path, resumed, max_epochs=2, ckpt_path=str(tmp_path / "run.ckpt"))
    trained = first.model.state_dict()
    assert_same(start, trained, trained.keys())


def test_continues_from_a_project_checkpoint(tmp_path):
    first = MAEPretraining(tiny_mae(seed=2), warmup_epochs=1)
    t = trainer(tmp_path)
    t.fit(first, digits())
    t.save_checkpoint(tmp_path / "run.ckpt")
    # A larger resolution: the sin-cos tables are recomputed, every other tensor carries over.
    module = MAEPretraining(tiny_mae(seed=1, img_size=24), init_weights=str(tmp_path / "run.ckpt"))
    capture = WeightsAtStart()
    trainer(tmp_path, callbacks=[capture]).fit(module, digits(img_size=24))
    trained = first.model.state_dict()
    assert_same(capture.state, trained, [k for k in trained if not k.endswith("pos_embed")])
    assert torch.equal(capture.state["pos_embed"], tiny_mae(seed=0, img_size=24).pos_embed)


def test_init_weights_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    arch = config["model"]["init_args"]["model"]["init_args"]
    source = MaskedAutoencoder(img_size=16, in_chans=1, **arch).state_dict()
    torch.save({"model": source}, tmp_path / "full.pth")
    cli = main(
        ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.init_args.img_size", "16",
         "--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar",
         "false", "--model.init_args.init_weights", str(tmp_path / "full.pth"), "--model.init_args.lr", "1e-12"]
    )  # fmt: skip
    assert cli.model.init_weights == str(tmp_path / "full.pth")
    # One step at a vanishing lr: the trained weights are still the file's (AdamW moves each by about lr).
    for key, value in cli.model.model.state_dict().items():
        assert torch.allclose(value, source[key], atol=1e-9), key


def test_effective_batch_and_lr_are_logged_as_metrics_and_hyperparameters(tmp_path):
    module = MAEPretraining(tiny_mae(seed=0), base_lr=1e-3, warmup_epochs=1)
    logger = CSVLogger(tmp_path, name="run")
    trainer(tmp_path, logger=logger, accumulate_grad_batches=2, limit_train_batches=4).fit(module, digits(16))
    peak = 1e-3 * 32 / 256
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("effective_batch_size")]
    assert len(rows) == 1
    assert int(float(rows[0]["effective_batch_size"])) == 32
    assert float(rows[0]["peak_lr"]) == pytest.approx(peak)
    hparams = yaml.load(
        (Path(logger.log_dir) / "hparams.yaml").read_text(), Loader=yaml.FullLoader
    )  # tuples are tagged
    assert hparams["effective_batch_size"] == 32 and hparams["peak_lr"] == pytest.approx(peak)


def test_compile_switch_compiles_the_model_in_place(tmp_path):
    module = MAEPretraining(tiny_mae(seed=0), compile=True)
    keys = list(module.state_dict())
    module.configure_model()
    assert module.model._compiled_call_impl is not None
    # the training step's entry point (forward_train) is compiled too
    assert getattr(module._forward_train, "_torchdynamo_orig_callable", None) is not None
    assert list(module.state_dict()) == keys  # no `_orig_mod.` in checkpoints
    assert MAEPretraining(tiny_mae(seed=0)).compile_model is False


@pytest.mark.slow
def test_compiled_model_trains_on_cpu(tmp_path):
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae(seed=0), compile=True, warmup_epochs=1)
    t = trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    t.fit(module, digits())
    assert module.model._compiled_call_impl is not None
    assert t.global_step == 2 and torch.isfinite(t.callback_metrics["train/loss_step"])


def test_a_resumed_run_no_longer_needs_its_init_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    arch = config["model"]["init_args"]["model"]["init_args"]
    torch.save({"model": MaskedAutoencoder(img_size=16, in_chans=1, **arch).state_dict()}, tmp_path / "full.pth")
    args = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.init_args.img_size", "16",
            "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--model.init_args.init_weights", str(tmp_path / "full.pth")]  # fmt: skip
    main([*args, "--trainer.max_epochs", "1"])
    (tmp_path / "full.pth").unlink()  # moved or deleted since the run started
    cli = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 4 and cli.model.init_weights is None
