"""What a segmentation run shows and writes: pictures of its predictions, its per-class scores, its masks.

:class:`SegmentationReport` draws, each validation epoch, image | ground truth | prediction for the first validation
images in a fixed palette with a legend, and writes the per-class IoU and accuracy as a table: PNG and CSV in the
run's folder, or W&B images (with W&B's segmentation-mask overlay) and a W&B table. :class:`SegmentationMaskWriter`
writes each predicted class map as a PNG of the image's name (class indices in a palette PNG), with an optional
colour overlay.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw
from torch import Tensor

from mae_lightning.callbacks.reconstruction import picture_statistics, shown_cells, to_uint8
from mae_lightning.data.datasets import is_image_file
from mae_lightning.runtime.wandb_run import WandbLogger

# Colour of the ignored pixels (void) in every picture.
IGNORE_COLOUR = (0, 0, 0)
SWATCH = 12


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, the same for every run: the PASCAL VOC colour map from its second entry (its
    first is black, left to the ignored pixels), whose bits spread neighbouring labels far apart."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        label, value = k + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                value[channel] |= ((label >> channel) & 1) << shift
            label >>= 3
        colours[k] = value
    return colours


def colourise(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; labels outside the palette (the ignore index) are black."""
    known = (labels >= 0) & (labels < len(colours))
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[known] = colours[labels[known]]
    out[~known] = IGNORE_COLOUR
    return out


def legend(class_names: Sequence[str], colours: np.ndarray, width: int) -> np.ndarray:
    """(h, width, 3) uint8 strip of a colour swatch and the name of each class, wrapped over as many rows as needed."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = [SWATCH + 4 + int(draw.textlength(name)) + 10 for name in class_names]
    rows, left = [[]], 0
    for index, cell in enumerate(cells):
        if left + cell > width and rows[-1]:
            rows.append([])
            left = 0
        rows[-1].append((index, left))
        left += cell
    strip = Image.new("RGB", (width, len(rows) * (SWATCH + 6) + 4), "white")
    draw = ImageDraw.Draw(strip)
    for row, entries in enumerate(rows):
        top = 4 + row * (SWATCH + 6)
        for index, left in entries:
            draw.rectangle([left + 2, top, left + 2 + SWATCH, top + SWATCH], fill=tuple(int(c) for c in colours[index]))
            draw.text((left + SWATCH + 6, top), class_names[index], fill="black")
    return np.asarray(strip)


def display_images(images: Tensor, datamodule, rgb_bands: Sequence[int] | None = None) -> Tensor:
    """Normalised images (N, C, H, W) as the data normalises them -> (N, 1 or 3, H, W) in [0, 1] to show."""
    mean, std = picture_statistics(datamodule)
    images = images.detach().float().cpu()
    if mean is not None:
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return shown_cells(images.clamp(0, 1), rgb_bands, min_cell=1)


def segmentation_picture(shown: Tensor, masks: Tensor, preds: Tensor, class_names: Sequence[str]) -> np.ndarray:
    """Rows of image | ground truth | prediction, and the legend under them: (H', W', 3) uint8.

    shown (N, 1 or 3, H, W) in [0, 1] (:func:`display_images`); masks and preds (N, H, W) class indices.
    """
    colours = palette(len(class_names))
    rows = []
    for image, mask, pred in zip(shown, masks.cpu().numpy(), preds.cpu().numpy(), strict=True):
        gap = np.full((image.shape[-2], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([to_uint8(image), gap, colourise(mask, colours), gap, colourise(pred, colours)], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, dtype=np.uint8))
    grid = np.concatenate(rows, axis=0)
    return np.concatenate([grid, legend(class_names, colours, grid.shape[1])], axis=0)


class SegmentationReport(Callback):
    """Each validation epoch: a picture of the first validation images and the per-class scores.

    The picture shows image | ground truth | prediction (void black, the classes in :func:`palette`'s colours, a
    legend under them); the table one row per class with its IoU and accuracy (empty where the class is absent).
    With a WandbLogger they go to W&B: ``val/segmentation`` (each image with W&B's ground-truth and prediction mask
    overlays) and ``val/per_class_iou`` (a table). Otherwise into ``<log_dir>/segmentation/``:
    ``epoch=NNNN.png`` and ``per_class_iou.csv`` (a row per epoch and class, appended). Rank zero draws the
    predictions the module made of its own first batch; nothing is run again.

    Args:
        num_images: images shown (rows of the picture).
        every_n_epochs: draw every this many validation epochs (the table is written every epoch).
        dirpath: folder of the files (default: ``<log_dir>/segmentation``).
        rgb_bands: multi-band data: the bands drawn as red, green and blue, or one drawn grey.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        dirpath: str | None = None,
        rgb_bands: list[int] | None = None,
    ) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(f"num_images and every_n_epochs must be >= 1, got {num_images}, {every_n_epochs}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath
        self.rgb_bands = rgb_bands
        self._shown: tuple[Tensor, Tensor, Tensor] | None = None
        self._dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # On every process: under DDP `trainer.log_dir` is a broadcast from rank zero.
        self._dir = (
            Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "segmentation"
        )

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero and isinstance(outputs, dict):
            k = self.num_images
            shown = display_images(batch[0][:k], trainer.datamodule, self.rgb_bands)
            self._shown = (shown, batch[1][:k].detach().cpu(), outputs["preds"][:k].detach().cpu())

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores = getattr(pl_module, "last_scores", None)
        if trainer.sanity_checking or not trainer.is_global_zero or scores is None or trainer.fast_dev_run:
            return
        epoch, names = trainer.current_epoch, pl_module.class_names
        rows = [
            [name, _number(iou), _number(acc)]
            for name, iou, acc in zip(names, scores["iou"], scores["acc"], strict=True)
        ]
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        draw = self._shown is not None and (epoch + 1) % self.every_n_epochs == 0
        picture = segmentation_picture(*self._shown, names) if draw else None
        for logger in wandb_loggers:
            logger.log_table(
                "val/per_class_iou", columns=["class", "IoU", "accuracy"], data=rows, step=trainer.global_step
            )
            if draw:
                images, masks = self._wandb_images(names)
                logger.log_image("val/segmentation", images=images, masks=masks, step=trainer.global_step)
        if not wandb_loggers:
            self._dir.mkdir(parents=True, exist_ok=True)
            table = self._dir / "per_class_iou.csv"
            new = not table.exists()
            with table.open("a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["epoch", "step", "class", "iou", "accuracy"])
                writer.writerows([[epoch, trainer.global_step, *row] for row in rows])
            if draw:
                Image.fromarray(picture).save(self._dir / f"epoch={epoch:04d}.png")
        self._shown = None

    def _wandb_images(self, class_names: Sequence[str]) -> tuple[list[np.ndarray], list[dict]]:
        """The images and, for each, the ground truth and the prediction as W&B mask overlays (void left out of the
        labels): ``log_image``'s ``images`` and ``masks``. Not ``wandb.Image`` objects: ``log_image`` wraps each image
        in one again, and a ``wandb.Image`` made of another drops its masks."""
        shown, masks, preds = self._shown
        labels = dict(enumerate(class_names))
        overlays = [
            {
                "ground_truth": {"mask_data": mask.astype(np.int64), "class_labels": labels},
                "prediction": {"mask_data": pred.astype(np.int64), "class_labels": labels},
            }
            for mask, pred in zip(masks.numpy(), preds.numpy(), strict=True)
        ]
        return [to_uint8(image) for image in shown], overlays


def _number(value: Tensor) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


class SegmentationMaskWriter(BasePredictionWriter):
    """Writes each predicted class map as ``<output_dir>/<image name>.png``: class indices in a palette PNG (values
    are the labels; viewers show :func:`palette`'s colours), cropped to the image's own size.

    Every process writes the images it predicted (a sample a distributed sampler repeats is written twice, alike).

    Args:
        output_dir: folder of the masks (default: ``<log_dir>/predictions``).
        overlay: also write ``<image name>_overlay.png``: the image with the prediction's colours blended in (image
            files; arrays have no colours to blend with).
        alpha: opacity of the overlay's colours.
    """

    def __init__(self, output_dir: str | None = None, overlay: bool = False, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.output_dir = output_dir
        self.overlay = overlay
        self.alpha = alpha
        self._dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._dir = (
            Path(self.output_dir)
            if self.output_dir
            else Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        )

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        dataset = trainer.datamodule.val_set
        colours = palette(pl_module.num_classes)
        flat_palette = colours.flatten().tolist()
        self._dir.mkdir(parents=True, exist_ok=True)
        sizes = prediction["size"].tolist()
        for mask, index, (height, width) in zip(
            prediction["mask"].cpu().numpy(), prediction["index"].tolist(), sizes, strict=True
        ):
            path = dataset.samples[index][0]
            labels = mask[:height, :width]
            if len(colours) < 256:
                written = Image.fromarray(labels.astype(np.uint8), mode="P")
                written.putpalette(flat_palette)
            else:  # more classes than a palette holds: 16-bit grey values
                written = Image.fromarray(labels.astype(np.uint16))
            stem = Path(path).stem
            written.save(self._dir / f"{stem}.png")
            if self.overlay and is_image_file(path):
                image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
                blended = (1 - self.alpha) * image + self.alpha * colourise(labels, colours)
                Image.fromarray(blended.round().astype(np.uint8)).save(self._dir / f"{stem}_overlay.png")
