"""Multi-label classification (AudioSet-style): binary cross-entropy, mAP, MixUp of multi-hot targets, short runs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multilabel_average_precision

from mae_lightning import FineTune, LinearProbe, VisionTransformer

NUM_CLASSES = 5


def tiny_model(num_classes: int = NUM_CLASSES) -> VisionTransformer:
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=32, depth=2, num_heads=2
    )


def multi_hot(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, NUM_CLASSES) float 0/1 targets with every class positive at least once (sample i has class i % 5)."""
    targets = (torch.rand(n, NUM_CLASSES, generator=generator) < 0.4).float()
    targets[torch.arange(n), torch.arange(n) % NUM_CLASSES] = 1.0
    return targets


class MultiHotData(LightningDataModule):
    """Random 1x16x16 images with multi-hot targets of 5 classes: 32 training and 16 validation samples."""

    num_classes = NUM_CLASSES

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        gen = torch.Generator().manual_seed(0)
        self.train = TensorDataset(torch.randn(32, 1, 16, 16, generator=gen), multi_hot(32, gen))
        self.val = TensorDataset(torch.randn(16, 1, 16, 16, generator=gen), multi_hot(16, gen))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


def quiet_trainer() -> Trainer:
    return Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)  # fmt: skip


def test_map_is_the_mean_over_classes_of_average_precision_worked_by_hand():
    module = LinearProbe(tiny_model(num_classes=3), multilabel=True)
    assert set(module.metrics) == {"val_mAP", "test_mAP"}
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.7, 0.3], [0.3, 0.6, 0.4], [0.1, 0.2, 0.5]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]])
    # AP of a class = the mean, over its positives, of the precision among the samples scored at least as high.
    # class 0: ranked 0.9(+) 0.8(-) 0.3(+) 0.1(-): precisions at the positives 1/1, 2/3       -> (1 + 2/3) / 2 = 5/6
    # class 1: ranked 0.7(-) 0.6(+) 0.2(+) 0.1(-): precisions at the positives 1/2, 2/3       -> (1/2 + 2/3) / 2 = 7/12
    # class 2: ranked 0.5(-) 0.4(+) 0.3(+) 0.2(+): precisions at the positives 1/2, 2/3, 3/4  -> 23/12 / 3 = 23/36
    # mAP = (5/6 + 7/12 + 23/36) / 3 = (30 + 21 + 23) / 36 / 3 = 74/108 = 37/54
    expected = (5 / 6 + 7 / 12 + 23 / 36) / 3
    assert expected == pytest.approx(37 / 54)
    metric = module.metrics["val_mAP"]
    metric.update(scores[:2], targets[:2])  # two batches: the ranking is over every evaluated sample
    metric.update(scores[2:], targets[2:])
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_a_class_without_positives_scores_zero_and_does_not_make_the_map_nan():
    module = FineTune(tiny_model(), multilabel=True, cutmix=0.0, label_smoothing=0.0)
    metric = module.metrics["test_mAP"]
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.5, 0.5], [0.1, 0.7, 0.3, 0.5, 0.5], [0.8, 0.6, 0.4, 0.5, 0.5]])
    targets = torch.tensor([[1, 0, 0, 1, 1], [0, 1, 0, 1, 1], [1, 0, 0, 1, 1]])  # class 2: no positive
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No positive samples found", UserWarning)
        metric.update(scores, targets)
        value = float(metric.compute())
    # Classes 0, 1, 3, 4 rank perfectly (AP 1, ties of all-positive classes included); class 2 counts as 0.
    assert value == pytest.approx(4 / 5, abs=1e-6)


def test_multilabel_loss_is_binary_cross_entropy_on_the_targets():
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(6, NUM_CLASSES, generator=gen) * 3, multi_hot(6, gen)
    for module in (LinearProbe(tiny_model(), multilabel=True),
                   FineTune(tiny_model(), multilabel=True, mixup=0.0, cutmix=0.0, label_smoothing=0.0)):  # fmt: skip
        loss = module.loss(logits, targets)
        torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, targets))
        p = torch.sigmoid(logits)  # the same by the formula
        by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
        torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)
        assert module.loss(logits.bfloat16(), targets).dtype == torch.float32
    # training_step without mixup: the loss of the module's logits on the targets as given.
    module = FineTune(tiny_model(), multilabel=True, mixup=0.0, cutmix=0.0, label_smoothing=0.0).eval()
    imgs = torch.randn(6, 1, 16, 16, generator=gen)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", "You are trying to `self.log", UserWarning)  # no Trainer attached
        loss = module.training_step((imgs, targets), 0)
        torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(module(imgs), targets))


def test_mixup_mixes_multi_hot_targets_with_the_images_lam():
    module = FineTune(tiny_model(), multilabel=True, mixup=0.8, cutmix=0.0, label_smoothing=0.0)
    assert module.mix is None  # not torchvision's MixUp, which one-hots integer labels
    gen = torch.Generator().manual_seed(2)
    imgs, targets = torch.randn(8, 1, 16, 16, generator=gen), multi_hot(8, gen)
    torch.manual_seed(3)
    mixed_imgs, mixed_targets = module.mix_multilabel(imgs, targets)
    # lam from one image pair: mixed[0] - flipped = lam * (imgs[0] - flipped), flipped being imgs[-1].
    lam = float(
        (mixed_imgs[0] - imgs[-1]).flatten() @ (imgs[0] - imgs[-1]).flatten() / (imgs[0] - imgs[-1]).square().sum()
    )
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed_imgs, lam * imgs + (1 - lam) * imgs.flip(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets.flip(0), rtol=1e-5, atol=1e-5)
    assert mixed_targets.dtype == torch.float32
    assert mixed_targets.min() >= 0.0 and mixed_targets.max() <= 1.0
    # lam ~ Beta(0.8, 0.8) from torch's global generator: the same seed draws the same lam.
    torch.manual_seed(3)
    expected_lam = float(torch.distributions.Beta(torch.tensor(0.8), torch.tensor(0.8)).sample())
    assert lam == pytest.approx(expected_lam, abs=1e-5)
    torch.manual_seed(3)
    again_imgs, again_targets = module.mix_multilabel(imgs, targets)
    torch.testing.assert_close(again_imgs, mixed_imgs, rtol=0, atol=0)
    torch.testing.assert_close(again_targets, mixed_targets, rtol=0, atol=0)
    # training_step trains on exactly that mixed batch.
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", "You are trying to `self.log", UserWarning)
        torch.manual_seed(3)
        loss = module.training_step((imgs, targets), 0)
        torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(module(mixed_imgs), mixed_targets))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"cutmix": 1.0, "label_smoothing": 0.0}, "set cutmix: 0"),
        ({"cutmix": 0.0, "label_smoothing": 0.1}, "set label_smoothing: 0"),
    ],  # fmt: skip
)
def test_cutmix_and_label_smoothing_are_refused_with_multilabel(settings, match):
    with pytest.raises(ValueError, match=match) as err:
        FineTune(tiny_model(), multilabel=True, **settings)
    assert "\n" not in str(err.value)
    FineTune(tiny_model(), **settings)  # single-label: both are fine


@pytest.mark.parametrize("protocol", ["finetune", "linprobe"])
def test_short_multilabel_run_reports_map(protocol, one_torch_thread):
    torch.manual_seed(0)
    if protocol == "finetune":
        module = FineTune(tiny_model(), multilabel=True, mixup=0.5, cutmix=0.0, label_smoothing=0.0, warmup_epochs=0)
    else:
        module = LinearProbe(tiny_model(), multilabel=True, warmup_epochs=0)
    assert module.hparams["multilabel"] is True  # a checkpoint rebuilds the multi-label module
    data = MultiHotData()
    trainer = quiet_trainer()
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    trainer.validate(module, datamodule=data, verbose=False)
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/mAP"]) <= 1.0 and torch.isfinite(metrics["val/loss"])
    assert "val/top1" not in metrics
    # The logged mAP is the one of the whole validation set at once, whatever the batches.
    imgs, targets = data.val.tensors
    module.eval()
    with torch.no_grad():
        logits = module(imgs)
    expected = multilabel_average_precision(torch.sigmoid(logits), targets.long(), num_labels=NUM_CLASSES)
    assert float(metrics["val/mAP"]) == pytest.approx(float(expected), abs=1e-6)
    assert float(metrics["val/loss"]) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, targets)), abs=1e-5
    )
    # predict_step: per-class scores without a sigmoid, and the multi-hot targets.
    out = module.predict_step((imgs, targets), 0)
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["target"], targets)


def test_single_label_path_keeps_top1_top5_and_cross_entropy():
    for module in (FineTune(tiny_model()), LinearProbe(tiny_model())):
        assert module.multilabel is False
        assert set(module.metrics) == {"val_top1", "val_top5", "test_top1", "test_top5"}
        logits, targets = torch.randn(4, NUM_CLASSES), torch.tensor([0, 3, 1, 4])
        torch.testing.assert_close(module.loss(logits, targets), F.cross_entropy(logits, targets))
    module = FineTune(tiny_model())
    assert module.mix is not None  # torchvision's MixUp / CutMix as before
