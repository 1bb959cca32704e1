"""The pretraining LightningModule under the real Trainer: lr scaling and schedule, logging, validation, resume."""

import csv

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from mae_lightning import MAEPretraining, MaskedAutoencoder, ReconstructionCallback
from mae_lightning.optim import warmup_cosine_lr
from tests.helpers import TINY_MAE, digits, tiny_mae


def trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", max_epochs=2, limit_train_batches=4, limit_val_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_lr_is_scaled_by_effective_batch_and_follows_warmup_cosine_per_step(tmp_path):
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae(), base_lr=1e-3, min_lr=1e-5, warmup_epochs=1)
    record = RecordLR()
    trainer(tmp_path, accumulate_grad_batches=2, callbacks=[record]).fit(module, digits(batch_size=16))
    assert module.effective_batch_size == 16 * 1 * 2
    peak = 1e-3 * 32 / 256
    assert module.peak_lr == pytest.approx(peak)
    # 4 batches per epoch, an optimizer step every 2: the lr is set at the first micro-batch of each step
    expected = [warmup_cosine_lr(e, peak, 1e-5, 1, 2) for e in (0.0, 0.5, 1.0, 1.5)]
    assert record.lrs == pytest.approx(expected)
    # every param group gets the same lr; weight decay stays per group
    groups = module.trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    assert groups[0]["betas"] == (0.9, 0.95)


def test_absolute_lr_overrides_scaling(tmp_path):
    module = MAEPretraining(tiny_mae(), lr=3e-3, warmup_epochs=0)
    trainer(tmp_path, max_epochs=1).fit(module, digits())
    assert module.peak_lr == 3e-3


def test_logs_loss_lr_and_throughput(tmp_path):
    module = MAEPretraining(tiny_mae(), warmup_epochs=1)
    logger = CSVLogger(tmp_path, name="run")
    trainer(tmp_path, logger=logger, log_every_n_steps=1).fit(module, digits())
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "lr", "train/images_per_sec"} <= columns
    rates = [float(r["train/images_per_sec"]) for r in rows if r["train/images_per_sec"]]
    assert len(rates) >= 6 and all(rate > 0 for rate in rates)
    lrs = [float(r["lr"]) for r in rows if r["lr"]]
    assert lrs[0] == 0.0 and lrs[1] > 0  # warmup starts from zero


def test_validation_loss_uses_the_same_masks_every_time(tmp_path):
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae())
    data = digits()
    t = trainer(tmp_path)
    first = t.validate(module, data, verbose=False)[0]["val/loss"]
    second = t.validate(module, data, verbose=False)[0]["val/loss"]
    assert first == second
    module.val_mask_seed = 1
    assert t.validate(module, data, verbose=False)[0]["val/loss"] != first


def test_resuming_with_another_effective_batch_says_so(tmp_path):
    module = MAEPretraining(tiny_mae(), warmup_epochs=1)
    checkpoint = tmp_path / "run.ckpt"
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, digits(batch_size=16))
    t.save_checkpoint(checkpoint)

    resumed = MAEPretraining(tiny_mae(), warmup_epochs=1)
    with pytest.warns(UserWarning, match=r"effective batch size 8, but the checkpoint was trained with 16"):
        trainer(tmp_path, max_epochs=2).fit(resumed, digits(batch_size=8), ckpt_path=checkpoint)
    assert resumed.peak_lr == pytest.approx(1.5e-4 * 8 / 256)


def test_module_built_in_python_reloads_with_the_model_passed_again(tmp_path):
    module = MAEPretraining(tiny_mae(), mask_ratio=0.6, warmup_epochs=1)
    assert "model" not in module.hparams and module.hparams["mask_ratio"] == 0.6
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, digits())
    t.save_checkpoint(tmp_path / "run.ckpt")
    loaded = MAEPretraining.load_from_checkpoint(tmp_path / "run.ckpt", model=tiny_mae())
    assert loaded.mask_ratio == 0.6
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_predict_returns_unmasked_embeddings_with_targets(tmp_path):
    module = MAEPretraining(tiny_mae())
    batches = trainer(tmp_path, limit_predict_batches=2).predict(module, digits())
    assert len(batches) == 2
    assert batches[0]["cls"].shape == (16, 32) and batches[0]["mean"].shape == (16, 32)
    assert batches[0]["target"].dtype == torch.int64


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="mask_ratio must be in the open interval"):
        MAEPretraining(tiny_mae(), mask_ratio=1.0)
    with pytest.raises(ValueError, match="base_lr must be positive, got 0"):
        MAEPretraining(tiny_mae(), base_lr=0)
    with pytest.raises(ValueError, match="lr must be positive, got -1"):
        MAEPretraining(tiny_mae(), lr=-1)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_schedule_ends_where_max_steps_ends_the_run(tmp_path, accumulate):
    """max_steps stops the run before max_epochs: warmup and cosine play out over the steps that are trained."""
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae(), base_lr=1e-3, min_lr=1e-5, warmup_epochs=0.5)
    record = RecordLR()
    # 6 batches per epoch = 6 / accumulate optimizer steps; max_epochs=10 would be the schedule's end before.
    run = trainer(tmp_path, max_epochs=10, max_steps=7, limit_train_batches=6, accumulate_grad_batches=accumulate)
    run.callbacks.append(record)
    run.fit(module, digits(batch_size=8))
    assert run.global_step == 7 and len(record.lrs) == 7
    steps_per_epoch = 6 // accumulate
    peak = 1e-3 * 8 * accumulate / 256
    expected = [warmup_cosine_lr(k / steps_per_epoch, peak, 1e-5, 0.5, 7 / steps_per_epoch) for k in range(7)]
    assert record.lrs == pytest.approx(expected)
    # Past the warmup the lr falls at every step towards min_lr, which it reaches as step 7 ends.
    decay = [lr for k, lr in enumerate(record.lrs) if k / steps_per_epoch >= 0.5]
    assert (
        len(decay) >= 4
        and all(a > b for a, b in zip(decay, decay[1:], strict=False))
        and decay[-1] - 1e-5 < 0.2 * (peak - 1e-5)
    )


def test_val_loss_does_not_depend_on_the_batch_size(tmp_path):
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae())
    losses = []
    for batch_size in (8, 16):
        (result,) = trainer(tmp_path, limit_val_batches=4 * 16 // batch_size).validate(
            module, digits(batch_size=batch_size), verbose=False
        )
        losses.append(result["val/loss"])
    # The same 64 images with the same per-image masks; only the float summation order differs.
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    module.val_mask_seed = 1
    (other,) = trainer(tmp_path, limit_val_batches=4).validate(module, digits(batch_size=16), verbose=False)
    assert other["val/loss"] != pytest.approx(losses[1], rel=1e-6)


# ---------------------------------------------------------------------------- training and evaluation mask ratios
class RatioRecordingAutoencoder(MaskedAutoencoder):
    """Records the mask ratio of every forward_train call, and whether it was a training one."""

    def forward_train(self, imgs, mask_ratio=0.75, noise=None):
        self.ratios.append((self.training, mask_ratio))
        return super().forward_train(imgs, mask_ratio, noise)


class RisingMaskRatio(MAEPretraining):
    """A mask-ratio schedule: 0.5 at the first step, 0.1 more at every step."""

    def train_mask_ratio(self):
        return 0.5 + 0.1 * self.trainer.global_step


def test_a_training_mask_ratio_schedule_leaves_validation_and_the_pictures_at_the_evaluation_ratio(tmp_path):
    model = RatioRecordingAutoencoder(**TINY_MAE)
    model.ratios = []
    module = RisingMaskRatio(model, mask_ratio=0.75, warmup_epochs=0)
    callback = ReconstructionCallback(num_images=2, dirpath=str(tmp_path / "pictures"))
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[callback], num_sanity_val_steps=0)
    run.fit(module, digits())
    assert [ratio for training, ratio in model.ratios if training] == pytest.approx([0.5, 0.6, 0.7])
    assert [ratio for training, ratio in model.ratios if not training] == [0.75, 0.75]  # two validation batches
    caption = Image.open(tmp_path / "pictures" / "epoch=0000.png").text["Description"]
    assert "75% of the patches hidden" in caption


def test_evaluation_mask_ratio_is_its_own_setting_and_old_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    module = MAEPretraining(tiny_mae(), mask_ratio=0.75, eval_mask_ratio=0.5)
    t = trainer(tmp_path, max_epochs=1)
    half = t.validate(module, digits(), verbose=False)[0]["val/loss"]
    module.eval_mask_ratio = 0.75
    assert t.validate(module, digits(), verbose=False)[0]["val/loss"] != half
    with pytest.raises(ValueError, match="mask_ratio must be in the open interval"):
        MAEPretraining(tiny_mae(), eval_mask_ratio=1.0)

    # A checkpoint written before the setting existed has no eval_mask_ratio: it evaluates at its mask_ratio.
    default = MAEPretraining(tiny_mae(), mask_ratio=0.6)
    assert default.eval_mask_ratio == 0.6
    t.fit(default, digits())
    t.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=False)
    del checkpoint["hyper_parameters"]["eval_mask_ratio"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = MAEPretraining.load_from_checkpoint(tmp_path / "old.ckpt", model=tiny_mae())
    assert (loaded.mask_ratio, loaded.eval_mask_ratio) == (0.6, 0.6)
