"""The kNN / online probe monitor and the reconstruction pictures, under the real Trainer with real files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from mae_lightning import DigitsDataModule, KNNMonitor, MAEPretraining, MaskedAutoencoder, ReconstructionCallback
from mae_lightning.callbacks.knn import knn_scores
from mae_lightning.callbacks.reconstruction import (
    GRID_PADDING,
    HEADER_HEIGHT,
    MASK_GRAY,
    MIN_CELL,
    fixed_mask_noise,
    masked_region_quality,
    picture_statistics,
    reconstruction_panels,
)
from mae_lightning.ops import patchify, unpatchify
from tests.helpers import TINY_MAE, tiny_mae


def trainer(tmp_path, callbacks, **kwargs):
    defaults = dict(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=3, logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


# --------------------------------------------------------------------------- kNN


def test_knn_on_a_toy_set_with_a_known_answer():
    # bank: class 0 near (1, 0), class 1 near (0, 1); cosine ignores the length
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [1.0, 1.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[5.0, 0.2], [0.0, 0.5], [1.0, 0.9]])
    scores = knn_scores(queries, bank, labels, num_classes=2, k=3, temperature=0.1)
    # the third query (42 degrees) has neighbours 4 (class 1, 4 degrees away), 1 and 0 (class 0, 39 and 42):
    # a majority vote says 0, the similarity-weighted vote says 1; a near-flat temperature gives the majority
    assert scores.argmax(dim=1).tolist() == [0, 1, 1]
    flat = knn_scores(queries, bank, labels, num_classes=2, k=3, temperature=100.0)
    assert flat.argmax(dim=1).tolist() == [0, 1, 0]
    # the exact weighted vote for the third query
    q = torch.nn.functional.normalize(queries[2:], dim=1)
    b = torch.nn.functional.normalize(bank, dim=1)
    sims = (q @ b.T)[0]
    expected = torch.tensor([(sims[0] / 0.1).exp() + (sims[1] / 0.1).exp(), (sims[4] / 0.1).exp()])
    torch.testing.assert_close(scores[2], expected)


def test_knn_leave_one_out_excludes_the_sample_itself():
    # each point's nearest other point has the other label: leave-one-out must get every one wrong
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    labels = torch.tensor([0, 1, 0, 1])
    loo = knn_scores(feats, feats, labels, num_classes=2, k=1, exclude_self=True, chunk_size=3)
    assert loo.argmax(dim=1).tolist() == [1, 0, 1, 0]
    with_self = knn_scores(feats, feats, labels, num_classes=2, k=1)
    assert with_self.argmax(dim=1).tolist() == labels.tolist()


def test_knn_monitor_logs_knn_and_online_probe_each_validation_epoch(tmp_path):
    monitor = KNNMonitor(num_classes=10, k=5)
    run = trainer(tmp_path, [monitor], max_epochs=2, limit_val_batches=4)
    module = MAEPretraining(tiny_mae(), warmup_epochs=0)
    run.fit(module, DigitsDataModule(img_size=16, batch_size=16, num_workers=0))
    metrics = run.callback_metrics
    assert 0.0 <= float(metrics["val/knn_top1"]) <= 1.0
    assert 0.0 <= float(metrics["val/online_linear_top1"]) <= 1.0
    # digits are easy: even a barely trained encoder's kNN is far above chance (0.1)
    assert float(metrics["val/knn_top1"]) > 0.3
    rows = (tmp_path / "lightning_logs/version_0/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    knn_rows = [r for r in rows[1:] if r.split(",")[header.index("val/knn_top1")]]
    assert len(knn_rows) == 2  # one per validation epoch
    # the online head trained; the encoder is not touched by it (its optimiser holds only the head)
    assert monitor.head.weight.grad is not None and monitor.head.weight.grad.abs().sum() > 0
    assert {id(p) for g in monitor.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in monitor.head.parameters()
    }


def test_knn_monitor_state_survives_a_checkpoint(tmp_path):
    monitor = KNNMonitor(num_classes=10)
    run = trainer(tmp_path, [monitor], enable_checkpointing=True)
    run.fit(MAEPretraining(tiny_mae(), warmup_epochs=0), DigitsDataModule(img_size=16, batch_size=16, num_workers=0))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("KNNMonitor"))
    torch.testing.assert_close(saved["head"]["weight"], monitor.head.weight.detach())


def test_knn_monitor_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_classes"):
        KNNMonitor(num_classes=1)
    with pytest.raises(ValueError, match="pool"):
        KNNMonitor(num_classes=10, pool="max")


# --------------------------------------------------------------------------- reconstructions


def _cell(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    y = HEADER_HEIGHT + GRID_PADDING + row * (size + GRID_PADDING)
    x = GRID_PADDING + col * (size + GRID_PADDING)
    return image[y : y + size, x : x + size, 0].astype(int)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_pngs_show_masked_and_pasted_images(tmp_path, norm_pix_loss):
    callback = ReconstructionCallback(num_images=3, every_n_epochs=1, mask_seed=7)
    run = trainer(tmp_path, [callback], max_epochs=2)
    module = MAEPretraining(tiny_mae(norm_pix_loss=norm_pix_loss), warmup_epochs=0)
    data = DigitsDataModule(img_size=16, batch_size=16, num_workers=0)
    run.fit(module, data)
    folder = tmp_path / "lightning_logs/version_0/reconstructions"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0000.png", "epoch=0001.png"]
    png = Image.open(folder / "epoch=0001.png")
    image = np.asarray(png)
    # 16 px images are drawn 6x larger (96 px cells, nearest neighbour) under a band of column names.
    size, rows, cols = MIN_CELL, 3, 4
    height, width = GRID_PADDING + rows * (size + GRID_PADDING), GRID_PADDING + cols * (size + GRID_PADDING)
    assert image.shape == (HEADER_HEIGHT + height, width, 3)
    assert (image[:HEADER_HEIGHT] < 128).any() and (image[:HEADER_HEIGHT] == 255).mean() > 0.5  # dark text on white
    assert "reconstruction" in png.text["Description"]
    assert ("un-normalised" in png.text["Description"]) == norm_pix_loss

    # the masks of the fixed seed: 75% of the 16 patches hidden
    mask = 1 - fixed_mask_noise(module.model, 3, 0.75, seed=7).argsort(dim=1).argsort(dim=1).lt(4).float()
    pixel_mask = module.model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 16))[:, 0].bool().numpy()
    pixel_mask = pixel_mask.repeat(6, axis=1).repeat(6, axis=2)
    gray = round(MASK_GRAY * 255)
    for row in range(rows):
        original, masked, _, pasted = (_cell(image, row, col, size) for col in range(cols))
        hidden = pixel_mask[row]
        assert hidden.sum() == 12 * 16 * 36
        # visible areas are the original, in the masked and in the pasted pictures
        np.testing.assert_array_equal(masked[~hidden], original[~hidden])
        np.testing.assert_array_equal(pasted[~hidden], original[~hidden])
        assert (masked[hidden] == gray).all()
        # hidden areas are the model's: they differ from the original
        assert (pasted[hidden] != original[hidden]).mean() > 0.5
    # the same images and masks every epoch: the original column is identical across epochs
    first = np.asarray(Image.open(folder / "epoch=0000.png"))
    np.testing.assert_array_equal(_cell(first, 0, 0, size), _cell(image, 0, 0, size))
    psnr = float(run.callback_metrics["val/recon_psnr_masked"])
    ssim = float(run.callback_metrics["val/recon_ssim_masked"])
    assert 0 < psnr < 60 and -1 <= ssim <= 1


def test_reconstruction_every_n_epochs(tmp_path):
    callback = ReconstructionCallback(num_images=2, every_n_epochs=2)
    run = trainer(tmp_path, [callback], max_epochs=3, limit_train_batches=1, limit_val_batches=1)
    run.fit(MAEPretraining(tiny_mae(), warmup_epochs=0), DigitsDataModule(img_size=16, batch_size=16, num_workers=0))
    folder = tmp_path / "lightning_logs/version_0/reconstructions"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0001.png"]


def test_each_rank_draws_its_own_reproducible_stream(monkeypatch):
    from mae_lightning.runtime.rng_state import seed_rank

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")

    def draws_of(rank: int) -> torch.Tensor:
        torch.manual_seed(7)  # what seed_everything(7) gives every process
        torch.rand(5)  # the model's initialisation, the same on every process
        seed_rank(rank)
        return torch.rand(8)

    streams = [draws_of(rank) for rank in range(3)]
    torch.manual_seed(7)
    torch.rand(5)
    assert torch.equal(streams[0], torch.rand(8))  # rank 0 (a single process) draws what it always drew
    assert not torch.equal(streams[0], streams[1]) and not torch.equal(streams[1], streams[2])
    assert torch.equal(streams[2], draws_of(2))  # a function of (seed, rank)


class PooledTargetAutoencoder(MaskedAutoencoder):
    """A researcher's change of target: regress the image average-pooled 2x (a quarter of the values per patch)."""

    @property
    def target_dim(self):
        return (self.patch_size // 2) ** 2 * self.in_chans

    def target(self, imgs):
        return patchify(F.avg_pool2d(imgs, 2), self.patch_size // 2)

    def prediction_to_pixels(self, pred, imgs):
        pooled = unpatchify(pred, self.patch_size // 2, self.grid_size, self.in_chans)
        return F.interpolate(pooled, scale_factor=2, mode="nearest")


def test_a_model_with_another_target_trains_and_draws_through_its_own_inverse(tmp_path):
    callback = ReconstructionCallback(num_images=3, mask_seed=7)
    run = trainer(tmp_path, [callback])
    torch.manual_seed(0)
    model = PooledTargetAutoencoder(**TINY_MAE)
    data = DigitsDataModule(img_size=16, batch_size=16, num_workers=0)
    run.fit(MAEPretraining(model, warmup_epochs=0), data)
    assert model.decoder_pred.out_features == 2 * 2 * 1  # the pixel head is sized by the target
    assert torch.isfinite(run.callback_metrics["train/loss_step"])

    # Every path scores against the pooled target: the official forward and the fast training path.
    model.eval()
    imgs = callback._images
    noise = fixed_mask_noise(model, 3, 0.75, seed=7)
    loss, pred, mask = model(imgs, 0.75, noise)
    target = model.target(imgs)
    assert target.shape == pred.shape == (3, 16, 4)
    torch.testing.assert_close(loss, (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum())
    torch.testing.assert_close(model.forward_train(imgs, 0.75, noise).loss, loss)

    # The pictures draw the predictions through the model's own inverse (2x2 blocks), and PSNR is measured on them.
    panels = reconstruction_panels(model, imgs, 0.75, noise)
    assert torch.equal(panels["reconstruction"], model.prediction_to_pixels(pred, imgs).clamp(0.0, 1.0))
    assert torch.equal(panels["reconstruction"][..., ::2, ::2], panels["reconstruction"][..., 1::2, 1::2])
    psnr, _ = masked_region_quality(reconstruction_panels(model, imgs, 0.75, noise, *picture_statistics(data)))
    assert float(run.callback_metrics["val/recon_psnr_masked"]) == pytest.approx(float(psnr), rel=1e-5)
