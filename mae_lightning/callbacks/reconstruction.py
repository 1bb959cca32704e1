"""Pictures of what the masked autoencoder reconstructs, with PSNR and SSIM of the hidden regions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.utils import make_grid

from mae_lightning.models.mae import MaskedAutoencoder
from mae_lightning.ops import unpatchify
from mae_lightning.runtime.strategy_forward import forward_through_strategy

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")
COLUMN_LABELS = ("original", "masked", "reconstruction", "+ visible")  # short enough for a 96 px cell
GRID_PADDING = 2
MASK_GRAY = 0.5
MIN_CELL = 96  # pixels a side of a shown image, at least
HEADER_HEIGHT = 14  # the band of column names above a grid
PANEL_KEYS = ("original", "masked", "reconstruction", "pasted")  # the panels of COLUMNS, in order
# The W&B table of the shown images: one row per image ("label" only for data with labels).
TABLE_COLUMNS = ("epoch", "image", *COLUMNS, "psnr_masked", "ssim_masked")


def fixed_mask_noise(
    model: MaskedAutoencoder, num_images: int, mask_ratio: float, seed: int, device: torch.device | str = "cpu"
) -> Tensor:
    """The (num_images, L) noise that fixes the masks of the shown images (the same every epoch): the model's
    ``fixed_noise`` of samples 0, 1, ...; with the module's ``val_mask_seed``, the very masks of ``val/loss``."""
    return model.fixed_noise(torch.arange(num_images), mask_ratio, seed, device)


@torch.no_grad()
def reconstruction_panels(
    model: MaskedAutoencoder,
    imgs: Tensor,
    mask_ratio: float,
    noise: Tensor,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    forward: Callable[[Tensor, float, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Original, masked, reconstructed (by the model's ``prediction_to_pixels``) and pasted images in pixel space
    (0..1), and the pixel mask.

    Args:
        model: the masked autoencoder.
        imgs: (N, C, H, W) images normalised as in training.
        mask_ratio: share of patches hidden.
        noise: (N, L) noise fixing the masks.
        mean: per-channel normalisation mean of the data (None: images are already in 0..1).
        std: per-channel normalisation std of the data.
        forward: ``(imgs, mask_ratio, noise) -> (loss, pred, mask)``; default ``model`` itself (a
            callback passes the forward of the strategy's wrapper, so sharded weights are gathered).

    Returns:
        ``original``, ``masked``, ``reconstruction``, ``pasted``: (N, C, H, W) in [0, 1];
        ``mask``: (N, 1, H, W), 1 on hidden pixels; ``pasted_data``: the pasted images in the data's own normalised
        units, unclipped (what a spectrogram is turned back into sound from).
    """
    _, pred, mask = (forward or model)(imgs, mask_ratio, noise)
    reconstruction = model.prediction_to_pixels(pred.float(), imgs.float())
    # Drawn as a one-channel image of the patch grid: the target's width need not be a patch's pixels.
    mask_patches = mask.unsqueeze(-1).expand(-1, -1, model.patch_size**2).float()
    pixel_mask = unpatchify(mask_patches, model.patch_size, model.grid_size, 1)
    pasted = imgs * (1 - pixel_mask) + reconstruction * pixel_mask

    def to_pixels(x: Tensor) -> Tensor:
        if mean is not None and std is not None:
            mean_t, std_t = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
            x = x * std_t + mean_t
        return x.clamp(0.0, 1.0)

    original = to_pixels(imgs.float())
    return {
        "original": original,
        "masked": original * (1 - pixel_mask) + MASK_GRAY * pixel_mask,
        "reconstruction": to_pixels(reconstruction),
        "pasted": to_pixels(pasted),
        "mask": pixel_mask,
        "pasted_data": pasted.float(),
    }


def masked_region_quality(panels: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """PSNR of the hidden pixels and SSIM averaged over the hidden pixels (data_range 1.0).

    SSIM is computed on the pasted image (visible patches exact) and its per-pixel map is
    averaged where the mask is 1; windows straddling a patch border see some visible pixels.
    Both pool the hidden pixels of all the images (not a mean of per-image values: the W&B table has those).
    """
    squared_error, ssim_sum, count = _masked_region_sums(panels)
    return _psnr(squared_error.sum(), count.sum()), ssim_sum.sum() / count.sum()


def _masked_region_sums(panels: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: summed squared error and summed SSIM map over the hidden pixels, and their number."""
    original, pasted, mask = panels["original"], panels["pasted"], panels["mask"].expand_as(panels["original"])
    hidden = (mask > 0.5).to(original.dtype)
    squared_error = ((pasted - original) ** 2 * hidden).flatten(1).sum(1)
    side = min(original.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    _, ssim_map = structural_similarity_index_measure(
        pasted, original, data_range=1.0, kernel_size=kernel, sigma=1.5 * kernel / 11, return_full_image=True
    )
    return squared_error, (ssim_map * hidden).flatten(1).sum(1), hidden.flatten(1).sum(1)


def _psnr(squared_error: Tensor, count: Tensor) -> Tensor:
    """PSNR in dB of pixels in [0, 1] from their summed squared error and number (torchmetrics' definition)."""
    return 10.0 * torch.log10(1.0 / (squared_error / count))


def panel_grid(panels: dict[str, Tensor], rgb_bands: Sequence[int] | None = None, min_cell: int = MIN_CELL) -> Tensor:
    """One row per image: original | masked | reconstruction | reconstruction + visible -> (3, H', W') in [0, 1].

    Args:
        panels: the :func:`reconstruction_panels` of (N, C, H, W) images.
        rgb_bands: as :class:`ReconstructionCallback`'s.
        min_cell: images smaller than this many pixels a side are enlarged by a whole factor, nearest
            neighbour (each pixel a block, patches stay sharp), so that 32 px images are readable.
    """
    rows = torch.stack([panels[key] for key in PANEL_KEYS], dim=1).flatten(0, 1)  # image-major, 4 per row
    return make_grid(shown_cells(rows, rgb_bands, min_cell), nrow=len(PANEL_KEYS), padding=GRID_PADDING, pad_value=1.0)


def shown_cells(images: Tensor, rgb_bands: Sequence[int] | None = None, min_cell: int = MIN_CELL) -> Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 3 or 1, H', W') on the CPU: the cells of :func:`panel_grid`, as drawn there."""
    num_bands = images.shape[1]
    bands = list(rgb_bands) if rgb_bands is not None else [0, 1, 2] if num_bands >= 3 else [0]
    if max(bands) >= num_bands:
        raise ValueError(f"rgb_bands={bands} names a band past the {num_bands} bands of the data (0-based)")
    factor = math.ceil(min_cell / min(images.shape[-2:]))
    images = images[:, bands].cpu()
    if factor > 1:
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return images


# Viridis at 9 evenly spaced points: the colour map of spectrograms (dark = quiet), interpolated linearly.
VIRIDIS = torch.tensor(
    [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=torch.float32
) / 255.0  # fmt: skip


def as_spectrograms(panels: dict[str, Tensor]) -> dict[str, Tensor]:
    """One-channel spectrogram panels (N, 1, n_mels, frames) in [0, 1] drawn as spectrograms are: frequency up (the
    lowest mel band at the bottom), time across, in :data:`VIRIDIS` colours -> (N, 3, n_mels, frames)."""
    drawn = {}
    for key in PANEL_KEYS:
        x = panels[key][:, 0].flip(-2).clamp(0, 1).cpu() * (len(VIRIDIS) - 1)
        low = x.floor().long().clamp(max=len(VIRIDIS) - 2)
        weight = (x - low)[..., None]
        drawn[key] = ((1 - weight) * VIRIDIS[low] + weight * VIRIDIS[low + 1]).permute(0, 3, 1, 2)
    return drawn


def with_column_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 grid of :func:`panel_grid` -> (HEADER_HEIGHT + H, W, 3) with each column's name above it."""
    cell = (image.shape[1] - GRID_PADDING) // len(COLUMNS) - GRID_PADDING
    header = Image.new("RGB", (image.shape[1], HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(header)
    for col, name in enumerate(COLUMN_LABELS):
        left = GRID_PADDING + col * (cell + GRID_PADDING)
        width = draw.textlength(name)
        draw.text((left + max((cell - width) / 2, 0), 2), name, fill="black")
    return np.concatenate([np.asarray(header), image], axis=0)


def to_uint8(grid: Tensor) -> np.ndarray:
    """(1 or 3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    if grid.shape[0] not in (1, 3):
        raise ValueError(f"a picture has 1 or 3 channels, got {grid.shape[0]}: choose them with panel_grid's rgb_bands")
    array = (grid * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


# A shown band of array data spans this many of its standard deviations either side of its mean.
DISPLAY_SPREAD = 2.0


def picture_statistics(datamodule) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The (mean, std) that :func:`reconstruction_panels` un-normalises a batch of ``datamodule`` with.

    Image data: the data's own, which give the pixels back in [0, 1]. Array data (in their own units) are
    drawn per band from ``mean - 2 std`` (black) to ``mean + 2 std`` (white), clipped beyond: a normalised
    value ``z`` at ``(z + 2) / 4``, hence (0.5, 0.25). The same stretch for every image, epoch, original and
    reconstruction, so the pictures compare; PSNR and SSIM are measured on it too.
    """
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if getattr(datamodule, "file_kind", "image") == "array" and mean is not None:
        return (0.5,) * len(mean), (0.5 / DISPLAY_SPREAD,) * len(mean)
    return mean, std


def is_spectrogram_data(datamodule) -> bool:
    """Whether the data are spectrograms (an audio DataModule, whose ``features`` turn sound into them)."""
    return hasattr(getattr(datamodule, "features", None), "to_audio")


class ReconstructionCallback(Callback):
    """Every N validation epochs: a grid of original | masked | reconstruction | reconstruction + visible patches.

    The same validation images (the first ones of the first batch) and the same masks (``mask_seed``)
    every time, so the grids show the model changing and nothing else. Logged as W&B images when the
    logger is a WandbLogger, beside a W&B table ``val/reconstruction_table`` with one row per image
    (epoch, the four panels, the image's PSNR and SSIM of its hidden pixels, its label if any); written as
    ``reconstructions/epoch=NNNN.png`` in the run's log folder otherwise. Either way with
    ``val/recon_psnr_masked`` and ``val/recon_ssim_masked`` logged. On ``predict`` the grid of the first
    batch is written as ``reconstructions/predict.png``. Every process runs the model on its own first
    images, through the strategy's wrapper (under FSDP a forward needs all of them); global rank 0 alone
    logs and writes. Spectrograms (audio data) are drawn as spectrograms (frequency up, a colour map), and with
    W&B each shown recording and its reconstruction are logged as sound too (``val/sound``, Griffin-Lim).

    Args:
        num_images: images shown (rows of the grid).
        every_n_epochs: draw every this many validation epochs.
        mask_seed: seed of the fixed masks.
        dirpath: folder of the PNG files (default: ``<log_dir>/reconstructions``).
        rgb_bands: multi-band data: the bands drawn as red, green and blue (0-based, e.g. ``[3, 2, 1]`` for
            Sentinel-2's B04, B03, B02), or one band drawn grey. Default: the first three bands, or the first
            in grey for fewer. Arrays are stretched per band (see :func:`picture_statistics`).
    """

    def __init__(
        self,
        num_images: int = 8,
        every_n_epochs: int = 1,
        mask_seed: int = 0,
        dirpath: str | None = None,
        rgb_bands: list[int] | None = None,
    ) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(f"num_images and every_n_epochs must be >= 1, got {num_images}, {every_n_epochs}")
        if rgb_bands is not None and (len(rgb_bands) not in (1, 3) or min(rgb_bands) < 0):
            raise ValueError(f"rgb_bands must be 3 band indices (red, green, blue) or 1 (grey), >= 0; got {rgb_bands}")
        self.rgb_bands = list(rgb_bands) if rgb_bands is not None else None
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.mask_seed = mask_seed
        self.dirpath = dirpath
        self._images: Tensor | None = None
        self._labels: Tensor | None = None  # of the shown images, when the data has labels
        self._dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Resolved here, on every process: under DDP `trainer.log_dir` is a broadcast from rank zero,
        # and a collective call made by rank zero alone (when drawing) would wait forever.
        if self.dirpath is not None:
            self._dir = Path(self.dirpath)
        else:
            self._dir = Path(trainer.log_dir or trainer.default_root_dir) / "reconstructions"

    def _draw(self, trainer: Trainer, pl_module: LightningModule, imgs: Tensor):
        model = pl_module.model
        mask_ratio = pl_module.eval_mask_ratio
        noise = fixed_mask_noise(model, imgs.shape[0], mask_ratio, self.mask_seed, imgs.device)
        mean, std = picture_statistics(getattr(trainer, "datamodule", None))
        forward = partial(forward_through_strategy, trainer, pl_module, "forward")
        panels = reconstruction_panels(model, imgs, mask_ratio, noise, mean, std, forward)
        caption = " | ".join(COLUMNS) + f"; {int(round(mask_ratio * 100))}% of the patches hidden"
        if model.norm_pix_loss:
            caption += "; predictions un-normalised with each target patch's mean and variance (norm_pix_loss)"
        return panels, caption

    # ------------------------------------------------------------------ validation
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._images is None:
            self._images = batch[0][: self.num_images].detach().clone()
            if len(batch) > 1 and isinstance(batch[1], Tensor) and batch[1].ndim == 1:
                self._labels = batch[1][: self.num_images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The same decision on every process (each holds its own first images): all of them run the model.
        if trainer.sanity_checking or self._images is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        was_training = pl_module.training
        pl_module.eval()
        panels, caption = self._draw(trainer, pl_module, self._images.to(pl_module.device))
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        psnr, ssim = masked_region_quality(panels)
        pl_module.log("val/recon_psnr_masked", psnr, rank_zero_only=True)
        pl_module.log("val/recon_ssim_masked", ssim, rank_zero_only=True)
        sound = is_spectrogram_data(trainer.datamodule)
        shown = as_spectrograms(panels) if sound else panels
        image = self._picture(shown)
        caption = f"epoch {trainer.current_epoch}: {caption}"
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            columns, rows = self._table(panels, shown, trainer.current_epoch)
        if wandb_loggers and sound:
            audios, captions, rate = self._sounds(trainer, panels)
        for logger in wandb_loggers:
            logger.log_image("val/reconstruction", images=[image], caption=[caption], step=trainer.global_step)
            logger.log_table("val/reconstruction_table", columns=columns, data=rows, step=trainer.global_step)
            if sound:
                rates = [rate] * len(audios)
                logger.log_audio("val/sound", audios, step=trainer.global_step, caption=captions, sample_rate=rates)
        if not wandb_loggers and not trainer.fast_dev_run:  # a debug run leaves no files, as Lightning's own
            self._write(image, self._dir / f"epoch={trainer.current_epoch:04d}.png", caption)

    # ------------------------------------------------------------------ predict
    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # A classifier checkpoint has nothing to reconstruct.
        if batch_idx or dataloader_idx or not isinstance(getattr(pl_module, "model", None), MaskedAutoencoder):
            return
        panels, caption = self._draw(trainer, pl_module, batch[0][: self.num_images])
        if is_spectrogram_data(trainer.datamodule):
            panels = as_spectrograms(panels)
        if trainer.is_global_zero and not trainer.fast_dev_run:
            self._write(self._picture(panels), self._dir / "predict.png", caption)

    def _table(self, panels: dict[str, Tensor], shown: dict[str, Tensor], epoch: int) -> tuple[list[str], list[list]]:
        """The columns and rows of the W&B table: per shown image its panels (as ``shown``: spectrograms in
        colour), PSNR and SSIM, and label."""
        import wandb

        squared_error, ssim_sum, count = _masked_region_sums(panels)  # per image, as masked_region_quality
        psnr, ssim = _psnr(squared_error, count), ssim_sum / count
        cells = {key: shown_cells(shown[key], self.rgb_bands) for key in PANEL_KEYS}
        columns = list(TABLE_COLUMNS)
        rows = [
            [epoch, i, *(wandb.Image(to_uint8(cells[key][i])) for key in PANEL_KEYS), p, s]
            for i, (p, s) in enumerate(zip(psnr.tolist(), ssim.tolist(), strict=True))
        ]
        labels = self._labels
        if labels is not None and len(labels) == len(rows) and bool((labels >= 0).any()):
            columns.append("label")  # -1 is the label of an image without one
            for row, label in zip(rows, labels.tolist(), strict=True):
                row.append(label if label >= 0 else None)
        return columns, rows

    def _picture(self, panels: dict[str, Tensor]) -> np.ndarray:
        return with_column_labels(to_uint8(panel_grid(panels, self.rgb_bands)))

    def _sounds(self, trainer: Trainer, panels: dict[str, Tensor]) -> tuple[list[np.ndarray], list[str], int]:
        """The shown spectrograms and their reconstructions (visible patches pasted back) as sound, by Griffin-Lim."""
        data = trainer.datamodule
        mean, std = data.mean[0], data.std[0]
        audios, captions = [], []
        for i in range(len(self._images)):
            for name, spectrogram in (
                ("original", self._images[i, 0]),
                ("reconstruction", panels["pasted_data"][i, 0]),
            ):
                audios.append(data.features.to_audio(spectrogram.float().cpu() * std + mean))
                captions.append(f"{i}: {name}")
        return audios, captions, data.features.sample_rate

    @staticmethod
    def _write(image: np.ndarray, path: Path, caption: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("Description", caption)
        Image.fromarray(image).save(path, pnginfo=info)
