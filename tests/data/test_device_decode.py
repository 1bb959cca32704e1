"""``decode: gpu``: the workers' deferred crops and the batched decode give the ``decode: tensor`` images.

No GPU here: :func:`decode_batch` runs with ``device="cpu"`` (the same code, torchvision's CPU decoder),
and a DataModule built as if a GPU were present trains through Lightning on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from mae_lightning import ImageFolderDataModule, MAEPretraining
from mae_lightning.data.device_decode import DeferredCrop, ReadBytes, collate_deferred, decode_batch
from mae_lightning.data.tensor_decode import ReadImageUint8, eval_transform_uint8, pretrain_transform_uint8
from tests.helpers import tiny_mae

SIZE = (24, 24)


def photos(folder: Path) -> list[Path]:
    """JPEGs of several sizes (colour and grey) and a PNG, which nvJPEG does not take."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(40, 56), (64, 48), (33, 71), (50, 50)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if i == 3 else "RGB")
        paths.append(folder / "train" / "a" / f"{i}.{'png' if i == 2 else 'jpg'}")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        image.save(paths[-1], quality=90)
    return paths


@pytest.mark.parametrize("train", [True, False])
def test_deferred_crops_decoded_in_one_batch_equal_the_tensor_pipeline(tmp_path, train):
    paths = photos(tmp_path)
    deferred_crop = DeferredCrop(SIZE, 3, (0.2, 1.0) if train else None, horizontal_flip=True)
    transform = pretrain_transform_uint8(SIZE, (0.2, 1.0), True) if train else eval_transform_uint8(SIZE, 0.875)
    expected, samples = [], []
    for seed, path in enumerate(paths):
        torch.manual_seed(seed)
        expected.append(transform(ReadImageUint8(3)(str(path))))
        torch.manual_seed(seed)
        samples.append((deferred_crop(ReadBytes()(str(path))), seed))
    (payloads, params), labels = collate_deferred(samples)
    assert [p.dim() for p in payloads] == [1, 1, 3, 1]  # the PNG is decoded in the worker
    if train:
        assert params[:, 4].tolist() != [0, 0, 0, 0]  # some flips drawn
    images = decode_batch(payloads, params, SIZE, in_chans=3, crop_ratio=0.875, device="cpu")
    assert images.dtype == torch.uint8 and images.shape == (4, 3, *SIZE)
    assert torch.equal(images, torch.stack(expected))
    assert labels.tolist() == [0, 1, 2, 3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_decode_gpu_without_a_gpu_stops_in_one_line(tmp_path):
    photos(tmp_path)
    with pytest.raises(ValueError, match="^decode: gpu decodes JPEGs with nvJPEG on a CUDA GPU, and none is visible"):
        ImageFolderDataModule(root=tmp_path, decode="gpu")


def test_a_deferred_decode_data_module_trains_through_lightning(tmp_path, monkeypatch):
    for i in range(8):
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        path = tmp_path / "train" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    with monkeypatch.context() as patch:  # built as on a GPU machine; then trained on the CPU
        patch.setattr(torch.cuda, "is_available", lambda: True)
        data = ImageFolderDataModule(
            root=tmp_path, img_size=16, decode="gpu", batch_size=4, num_workers=1, pin_memory=False
        )
    model = MAEPretraining(
        tiny_mae(in_chans=3),
        warmup_epochs=0,
    )  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    seen = []
    monkeypatch.setattr(model, "on_train_batch_start", lambda batch, batch_idx: seen.append(batch[0]))
    trainer.fit(model, data)
    assert trainer.global_step == 2
    assert [imgs.shape for imgs in seen] == [(4, 3, 16, 16)] * 2
    assert all(imgs.dtype == torch.float32 and imgs.abs().max() < 5 for imgs in seen)  # normalised


def test_decode_gpu_still_checks_at_start_that_the_images_can_be_read(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    for i in range(3):
        (tmp_path / "train" / f"{i}.jpg").write_bytes(b"not an image")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="none of the 3 image files under .* can be read"):
        ImageFolderDataModule(root=tmp_path, decode="gpu")


def test_a_16_bit_png_is_decoded_in_the_worker_to_the_8_bits_of_the_other_modes(tmp_path):
    """decode: gpu hands a PNG to the workers' decoder: a 16-bit one keeps its top 8 bits, with the same warning."""
    path = tmp_path / "dim.png"
    Image.fromarray(np.linspace(0, 4000, 30 * 40).astype(np.uint16).reshape(30, 40)).save(path)
    assert Image.open(path).mode == "I;16"
    with pytest.warns(UserWarning, match="^<image bytes> is a 16-bit image: it is read with 8 bits"):
        (payload, _), _ = collate_deferred([(DeferredCrop(SIZE, 1, crop_scale=None)(ReadBytes()(str(path))), 0)])
    images = decode_batch(payload, torch.tensor([[0, 0, 30, 40, -1]]), SIZE, 1, 1.0, device="cpu")
    top_8_bits = torch.from_numpy(np.asarray(Image.open(path)) >> 8).to(torch.uint8)[None]
    expected = eval_transform_uint8(SIZE, 1.0)(top_8_bits)
    assert images.dtype == torch.uint8 and torch.equal(images[0], expected)
