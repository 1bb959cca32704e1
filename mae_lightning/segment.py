"""The LightningModule of semantic segmentation from a pretrained encoder: the paper's dense transfer protocol.

The MAE paper's ADE20K recipe (its appendix A.4, after BEiT): UperNet on a ViT started from the pretrained encoder,
AdamW with layer-wise lr decay 0.65, drop path 0.1, a linear warmup then polynomial decay, cross-entropy that skips
the ignore index (plus 0.4 times an auxiliary FCN head's). Scores are mmsegmentation's, from one confusion matrix
reduced over every process: per-class IoU and accuracy, their means over the classes present (mIoU, mAcc) and the
accuracy over all pixels (aAcc).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from mae_lightning.models.classifier import load_for_stage
from mae_lightning.models.segmenter import Segmenter, sliding_window
from mae_lightning.optim import param_groups_layer_decay
from mae_lightning.recipe import Recipe, SetupError


def segmentation_scores(confusion: Tensor) -> dict[str, Tensor]:
    """mmsegmentation's scores from a confusion matrix (K, K), rows the true classes and columns the predicted ones.

    ``iou`` (K,): true positives / (true + predicted - true positives), NaN for a class neither in the masks nor
    predicted; ``acc`` (K,): true positives / pixels of the class, NaN for a class not in the masks; ``mIoU`` and
    ``mAcc`` their means over the classes that are not NaN; ``aAcc`` the correct share of all pixels. Pixels of the
    ignore index are not in the matrix.
    """
    confusion = confusion.double()
    hits, truth, predicted = confusion.diag(), confusion.sum(dim=1), confusion.sum(dim=0)
    union = truth + predicted - hits
    iou = torch.where(union > 0, hits / union.clamp(min=1), math.nan)
    acc = torch.where(truth > 0, hits / truth.clamp(min=1), math.nan)
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": iou.nanmean(),
        "mAcc": acc.nanmean(),
        "aAcc": hits.sum() / confusion.sum().clamp(min=1),
    }


class Segmentation(Recipe):
    """Semantic segmentation: a :class:`~mae_lightning.models.Segmenter` trained on image + mask pairs.

    Trains on crops (the data's ``img_size``), evaluates on whole images of any size: in one pass (``whole``) or
    (``slide``) in overlapping crops whose logits are averaged, as mmsegmentation. Logs ``val/mIoU``, ``val/mAcc``,
    ``val/aAcc`` and ``val/IoU/<class>`` (``test/`` alike); ``predict`` returns each image's class
    map (write them with :class:`~mae_lightning.callbacks.SegmentationMaskWriter`).

    Args:
        model: the segmenter; its ``num_classes`` must be the data's.
        pretrained: checkpoint read when the Trainer sets the module up, once (None: random initialisation).
            ``fit`` loads its encoder (this project's pretraining ``.ckpt``, an official ``.pth``, a ``wandb:`` or
            ``hf:`` reference; the head starts new); ``validate``/``test``/``predict`` load a trained segmenter
            as it is, head included.
        base_lr: learning rate per 256 images of effective batch (1.6e-3: the recipe's 1e-4 at batch 16).
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the decay.
        weight_decay: AdamW weight decay (none on biases, norms, ``pos_embed`` and ``cls_token``).
        warmup_epochs: epochs of linear warmup (1500 of 160k iterations in the ADE20K recipe).
        layer_decay: layer-wise lr decay of the encoder; the head trains at the full lr.
        betas: AdamW betas.
        lr_decay: the decay after the warmup: ``"poly"`` (power 1, mmsegmentation's) or ``"cosine"``.
        auxiliary_weight: weight of the auxiliary head's loss (UperNet's FCN head; 0.4 in mmsegmentation).
        ignore_index: the masks' label of pixels left out of the loss and of every score; must be the data's.
        eval_mode: ``"whole"`` (each image in one pass, padded to the patch grid) or ``"slide"``.
        eval_crop: ``slide``: the (height, width) of the crops (default: the model's ``img_size``).
        eval_stride: ``slide``: the step between crops (default: two thirds of the crop, 341 for 512).
    """

    weights_argument = "pretrained"

    def __init__(
        self,
        model: Segmenter,
        pretrained: str | None = None,
        base_lr: float = 1.6e-3,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        layer_decay: float = 0.65,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_decay: str = "poly",
        auxiliary_weight: float = 0.4,
        ignore_index: int = 255,
        eval_mode: str = "whole",
        eval_crop: tuple[int, int] | None = None,
        eval_stride: tuple[int, int] | None = None,
    ) -> None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if lr_decay not in ("poly", "cosine"):
            raise ValueError(f"lr_decay must be 'poly' or 'cosine', got {lr_decay!r}")
        if eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {eval_mode!r}")
        if auxiliary_weight < 0:
            raise ValueError(f"auxiliary_weight must be >= 0, got {auxiliary_weight}")
        if 0 <= ignore_index < model.num_classes:
            raise ValueError(f"ignore_index={ignore_index} is one of the {model.num_classes} classes")
        super().__init__(model, base_lr, lr, min_lr, weight_decay, warmup_epochs)
        self.pretrained = pretrained
        self.layer_decay = layer_decay
        self.betas = tuple(betas)
        self.lr_decay = lr_decay
        self.auxiliary_weight = auxiliary_weight
        self.ignore_index = ignore_index
        self.num_classes = model.num_classes
        self.eval_mode = eval_mode
        self.eval_crop = tuple(eval_crop) if eval_crop is not None else tuple(model.img_size)
        self.eval_stride = (
            tuple(eval_stride) if eval_stride is not None else tuple(-(-2 * c // 3) for c in self.eval_crop)
        )
        if min(self.eval_stride) < 1 or any(s > c for s, c in zip(self.eval_stride, self.eval_crop, strict=True)):
            raise ValueError(f"eval_stride must be in [1, eval_crop], got {self.eval_stride} for {self.eval_crop}")
        self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        # One confusion matrix per stage: every score derives from it, and torchmetrics sums it over processes.
        self.confusion = torch.nn.ModuleDict(
            {
                stage: MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index, validate_args=False)
                for stage in ("val", "test")
            }
        )
        self.last_scores: dict[str, Tensor] | None = None
        self._evaluated = 0

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs (N, C, H, W), any size -> logits (N, num_classes, H, W), by :attr:`eval_mode`."""
        if self.eval_mode == "slide":
            return sliding_window(self.model, imgs, self.eval_crop, self.eval_stride, self.num_classes)
        return self.model(imgs)

    def predict_classes(self, imgs: Tensor, sizes: Tensor) -> Tensor:
        """Class maps of a padded evaluation batch, each image read at its own size ``sizes`` (N, 2): its prediction
        does not depend on the images it is batched with. (N, C, H, W) -> (N, H, W), the padding the ignore index.

        A batch of one size is one pass. Images of several sizes are read one at a time; under FSDP, whose every
        forward needs all processes, every batch is, so each process makes as many passes as the others.
        """
        sharded = isinstance(self.trainer.strategy, FSDPStrategy) if self._trainer is not None else False
        height, width = imgs.shape[-2:]
        if not sharded and bool((sizes == sizes.new_tensor([height, width])).all()):
            return self(imgs).argmax(dim=1)
        classes = torch.full(imgs.shape[:1] + imgs.shape[2:], self.ignore_index, dtype=torch.long, device=imgs.device)
        for i, (h, w) in enumerate(sizes.tolist()):
            classes[i, :h, :w] = self(imgs[i : i + 1, :, :h, :w]).argmax(dim=1)[0]
        return classes

    def load_weights_file(self, path: str, stage: str) -> bool:
        load_for_stage(self.model, path, stage)
        return True

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.trainer.datamodule if self._trainer is not None else None
        for name in ("num_classes", "ignore_index"):
            value = getattr(data, name, None)
            if value is not None and value != getattr(self, name):
                raise SetupError(
                    f"the segmentation module has {name}={getattr(self, name)} and the data {name}={value}: "
                    f"set them alike (model.init_args{'.model.init_args' if name == 'num_classes' else ''}.{name})"
                )
        names = getattr(data, "class_names", None)
        if names is not None:
            self.class_names = list(names)

    def configure_optimizers(self):
        groups = param_groups_layer_decay(
            self.model,
            self.weight_decay,
            self.layer_decay,
            no_weight_decay=self.model.no_weight_decay(),
            shapes=self._param_shapes,
        )
        return torch.optim.AdamW(groups, lr=self.base_lr, betas=self.betas)

    def loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        """Cross-entropy per pixel, in float32, over the pixels that are not the ignore index."""
        return F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx: int) -> Tensor:
        imgs, masks = batch[0], batch[1]
        logits, auxiliary = self.model.forward_with_auxiliary(imgs)
        loss = decode_loss = self.loss(logits, masks)
        if auxiliary is not None and self.auxiliary_weight > 0:
            auxiliary_loss = self.loss(auxiliary, masks)
            loss = decode_loss + self.auxiliary_weight * auxiliary_loss
            self.log("train/decode_loss", decode_loss, on_step=True, on_epoch=False)
            self.log("train/auxiliary_loss", auxiliary_loss, on_step=True, on_epoch=False)
        self.log_train_loss(loss, imgs.shape[0])
        return loss

    def _unpadded(self, masks: Tensor, dataset_size: int) -> Tensor:
        """``masks`` with the samples that a distributed sampler repeated to even out the processes' shares set to
        the ignore index, so that N processes score each image once, as one does.

        Lightning's evaluation sampler deals the padded order ``0..size-1, 0, 1, ...`` out in turn: this process's
        k-th sample is at position ``k * world + rank`` of it, a repeat from ``dataset_size`` on.
        """
        count = masks.shape[0]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        positions = (self._evaluated + torch.arange(count, device=masks.device)) * world + rank
        self._evaluated += count
        repeated = positions >= dataset_size
        if not repeated.any():
            return masks
        return torch.where(repeated[:, None, None], self.ignore_index, masks)

    def _evaluate(self, batch, stage: str, dataset_size: int) -> dict[str, Tensor]:
        imgs, masks, _, sizes = batch
        masks = self._unpadded(masks, dataset_size)
        preds = self.predict_classes(imgs, sizes)
        self.confusion[stage].update(preds, masks)
        return {"preds": preds}

    def on_validation_epoch_start(self) -> None:
        self._evaluated = 0

    def on_test_epoch_start(self) -> None:
        self._evaluated = 0

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val", len(self.trainer.val_dataloaders.dataset))

    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test", len(self.trainer.test_dataloaders.dataset))

    def _log_scores(self, stage: str) -> None:
        metric = self.confusion[stage]
        scores = segmentation_scores(metric.compute())
        metric.reset()
        for name in ("mIoU", "mAcc", "aAcc"):
            self.log(f"{stage}/{name}", scores[name].float(), prog_bar=name == "mIoU", rank_zero_only=True)
        for name, iou in zip(self.class_names, scores["iou"].tolist(), strict=True):
            if not math.isnan(iou):
                self.log(f"{stage}/IoU/{name}", iou, rank_zero_only=True)
        self.last_scores = scores
        if stage == "test" or not self.trainer.sanity_checking:
            rank_zero_info(f"{stage}: mIoU {scores['mIoU']:.4f}, mAcc {scores['mAcc']:.4f}, aAcc {scores['aAcc']:.4f}")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Each image's class map (``mask``, (N, H, W) padded as the batch), dataset ``index`` and ``size`` (N, 2)."""
        imgs, _, indices, sizes = batch
        return {"mask": self.predict_classes(imgs, sizes), "index": indices, "size": sizes}
