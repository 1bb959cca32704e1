"""LightningModules that measure a pretrained encoder: the paper's linear probe and fine-tuning protocols.

Both train a :class:`~mae_lightning.models.VisionTransformer` started from a pretraining checkpoint
(``pretrained``: this project's MAEPretraining ``.ckpt`` or an official ``.pth``), set the lr before
every step from the fractional epoch (linear warmup, then cosine), scale it by the effective batch
(``lr = base_lr * eff_batch / 256``) and report top-1 / top-5 accuracy with torchmetrics. With ``multilabel``
(AudioSet-style data: multi-hot targets), the loss is binary cross-entropy and the score is mean average precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision
from torchvision.transforms import v2

from mae_lightning.models.classifier import VisionTransformer, load_for_stage
from mae_lightning.optim import LARS, param_groups_layer_decay
from mae_lightning.recipe import Recipe, SetupError

SHARDED_PROBE_MESSAGE = (
    "LinearProbe trains only its head, with LARS, whose trust ratio needs whole tensors, not shards: "
    "run it with `trainer.strategy: ddp` (the frozen encoder needs no sharding)"
)


class ImageClassification(Recipe):
    """Shared machinery of :class:`LinearProbe` and :class:`FineTune`: metrics, evaluation steps, weights to start from.

    Args:
        model: the classifier; its ``head`` decides the number of classes, which must be the data's.
        pretrained: checkpoint read when the Trainer sets the module up, once (None: random initialisation).
            ``fit`` loads its encoder (the head stays new); ``validate``/``test``/``predict`` evaluate it as
            published, head included (an official ``mae_finetuned_vit_*.pth``). A module restored from a
            checkpoint (``ckpt_path``, ``load_from_checkpoint``) does not need the file.
        base_lr: learning rate per 256 images of effective batch.
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the cosine.
        weight_decay: weight decay of the weight matrices.
        warmup_epochs: epochs of linear warmup.
        multilabel: multi-label classification (AudioSet-style): the targets are multi-hot float tensors
            (N, num_classes) of 0/1, the loss is binary cross-entropy on the logits, and the score is ``mAP``,
            the mean over classes of their average precision (torchmetrics ``MultilabelAveragePrecision``),
            instead of cross-entropy and top-1 / top-5 accuracy.
    """

    weights_argument = "pretrained"

    def __init__(
        self,
        model: VisionTransformer,
        pretrained: str | None = None,
        base_lr: float = 1e-3,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.0,
        warmup_epochs: float = 5,
        multilabel: bool = False,
    ) -> None:
        if model.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1 to classify, got {model.num_classes}")
        super().__init__(model, base_lr, lr, min_lr, weight_decay, warmup_epochs)
        self.pretrained = pretrained
        self.num_classes = model.num_classes
        self.multilabel = multilabel
        if multilabel:
            # AudioSet's mAP: the unweighted mean over classes of each class's average precision, from every
            # evaluated sample at once (no binning: thresholds=None). A class with no positive among the evaluated
            # samples has an undefined AP; torchmetrics (as sklearn's average_precision_score) warns, sets its
            # recall to 1 and scores it 0, so it lowers the mean and never makes it NaN (were a future version to
            # give NaN, the macro average leaves NaN classes out, with a warning). An evaluation subset that
            # misses some classes therefore reads low: evaluate on a set with a positive of every class
            # (AudioSet's eval set has) to compare with published numbers.
            self.metric_names: tuple[str, ...] = ("mAP",)
            self.metrics = nn.ModuleDict(
                {
                    f"{stage}_mAP": MultilabelAveragePrecision(num_labels=self.num_classes, average="macro")
                    for stage in ("val", "test")
                }
            )
        else:
            self.metric_names = ("top1", "top5")
            top5 = min(5, self.num_classes)
            self.metrics = nn.ModuleDict(
                {
                    f"{stage}_{name}": MulticlassAccuracy(self.num_classes, top_k=k, average="micro")
                    for stage in ("val", "test")
                    for name, k in (("top1", 1), ("top5", top5))
                }
            )

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs (N, C, H, W) -> logits (N, num_classes)."""
        return self.model(imgs)

    def load_weights_file(self, path: str, stage: str) -> bool:
        load_for_stage(self.model, path, stage)
        return True

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data_classes = getattr(self.trainer.datamodule, "num_classes", None) if self._trainer is not None else None
        if stage == "fit" and data_classes is not None and data_classes != self.num_classes:
            raise SetupError(
                f"the classifier's head has model.init_args.num_classes={self.num_classes} outputs, but the data has "
                f"{data_classes} classes: set num_classes to {data_classes}"
            )

    # ------------------------------------------------------------------ steps
    def features(self, imgs: Tensor) -> Tensor:
        """Pooled features before the head: (N, C, H, W) -> (N, D)."""
        return self.model.forward_features(imgs)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of logits (N, num_classes) against the targets: class indices (N,) by cross-entropy, or with
        ``multilabel`` multi-hot (or mixed) targets (N, num_classes) in [0, 1] by binary cross-entropy, in float32."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return F.cross_entropy(logits, targets)

    def _evaluate(self, batch, stage: str) -> None:
        imgs, targets = batch[0], batch[1]
        logits = self(imgs)
        self.log(f"{stage}/loss", self.loss(logits, targets), sync_dist=True, batch_size=imgs.shape[0])
        if self.multilabel:
            # Probabilities, not logits: torchmetrics applies a sigmoid only to a batch with a value outside [0, 1],
            # so raw logits could be ranked on two scales across batches. The targets must be integers.
            logits, targets = torch.sigmoid(logits.float()), targets.long()
        for name in self.metric_names:
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(logits, targets)
            self.log(f"{stage}/{name}", metric, prog_bar=name in ("top1", "mAP"), batch_size=imgs.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Features before the head (``embedding``), the ``logits`` and the ``target`` of each image.

        With ``multilabel`` the ``logits`` are per-class scores, no sigmoid applied (``torch.sigmoid`` gives each
        class's probability), and the ``target`` the multi-hot row.
        """
        imgs = batch[0]
        embedding = self.features(imgs)
        return {"embedding": embedding, "logits": self.model.head(embedding), "target": batch[1]}


class LinearProbe(ImageClassification):
    """The paper's linear probe: frozen encoder, ``BatchNorm1d(affine=False)`` + linear head, LARS.

    As the official ``main_linprobe.py``: the head becomes ``Sequential(BatchNorm1d(D, affine=False,
    eps=1e-6), Linear)`` with weights drawn from N(0, 0.01) (truncated), every other parameter is
    frozen, and LARS (momentum 0.9) trains the head with base lr 0.1, no weight decay, 10 warmup
    epochs then cosine. Use ``global_pool: false`` in the model for the paper's cls-token features.

    Args:
        model: the classifier (its encoder is frozen).
        pretrained: pretraining checkpoint to probe (None probes a randomly initialised encoder).
        base_lr: learning rate per 256 images of effective batch.
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the cosine.
        weight_decay: LARS weight decay of the head's weight matrix (the paper: 0).
        warmup_epochs: epochs of linear warmup.
        momentum: LARS momentum.
        multilabel: multi-label classification: multi-hot targets, binary cross-entropy, mAP (see
            :class:`ImageClassification`).
    """

    def __init__(
        self,
        model: VisionTransformer,
        pretrained: str | None = None,
        base_lr: float = 0.1,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.0,
        warmup_epochs: float = 10,
        momentum: float = 0.9,
        multilabel: bool = False,
    ) -> None:
        super().__init__(model, pretrained, base_lr, lr, min_lr, weight_decay, warmup_epochs, multilabel)
        self.momentum = momentum
        linear = model.head
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        model.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=1e-6), linear)
        model.requires_grad_(False)
        model.head.requires_grad_(True)

    def features(self, imgs: Tensor) -> Tensor:
        # The encoder is frozen: no graph through it, and eval mode (no drop path) whatever the trainer sets.
        encoder_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            feats = self.model.forward_features(imgs)
        self.model.train(encoder_training)
        return feats

    def forward(self, imgs: Tensor) -> Tensor:
        return self.model.head(self.features(imgs))

    def configure_model(self) -> None:
        super().configure_model()
        if isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ValueError(SHARDED_PROBE_MESSAGE)

    def configure_optimizers(self):
        return LARS(
            self.model.head.parameters(), lr=self.base_lr, weight_decay=self.weight_decay, momentum=self.momentum
        )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        imgs, targets = batch[0], batch[1]
        loss = self.loss(self(imgs), targets)
        self.log_train_loss(loss, imgs.shape[0])
        return loss


class FineTune(ImageClassification):
    """The paper's end-to-end fine-tuning (official ``main_finetune.py``), or partial fine-tuning of the last blocks.

    AdamW over layer-wise lr-decayed groups (see :func:`~mae_lightning.optim.param_groups_layer_decay`),
    MixUp / CutMix (torchvision ``transforms.v2``, one of the two per batch at random, as timm's
    ``switch_prob 0.5``) with label smoothing on the mixed targets, and a head initialised N(0, 2e-5).
    Use the data's ``augmentation: finetune`` for RandAugment and random erasing, and the model's
    ``drop_path_rate`` and ``global_pool`` for drop path and global average pooling with ``fc_norm``.

    With ``multilabel`` (AST / Audio-MAE style) the loss is binary cross-entropy on the multi-hot targets, MixUp is
    drawn here (``lam ~ Beta(mixup, mixup)`` from torch's global generator; images and targets are
    ``lam * x + (1 - lam) * x.flip(0)``, the batch paired with its flip as timm's mixup), and neither CutMix nor
    label smoothing is offered: ``cutmix`` and ``label_smoothing`` must be 0.

    Args:
        model: the classifier.
        pretrained: pretraining checkpoint to start from (None trains from random initialisation).
        base_lr: learning rate per 256 images of effective batch.
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the cosine.
        weight_decay: AdamW weight decay (none on biases, norms, ``pos_embed`` and ``cls_token``).
        warmup_epochs: epochs of linear warmup.
        layer_decay: layer-wise lr decay (the official ViT-B recipe uses 0.65, ViT-L/H 0.75).
        betas: AdamW betas.
        mixup: MixUp alpha (0 disables it).
        cutmix: CutMix alpha (0 disables it).
        label_smoothing: label smoothing of the (mixed) targets.
        trainable_blocks: fine-tune only the last k blocks (plus the final norm and head) and freeze
            the rest, as the paper's partial fine-tuning (Fig. 9); None tunes every block.
        multilabel: multi-label classification: multi-hot targets, binary cross-entropy, mAP (see
            :class:`ImageClassification`); MixUp only, no label smoothing.
    """

    def __init__(
        self,
        model: VisionTransformer,
        pretrained: str | None = None,
        base_lr: float = 1e-3,
        lr: float | None = None,
        min_lr: float = 1e-6,
        weight_decay: float = 0.05,
        warmup_epochs: float = 5,
        layer_decay: float = 0.75,
        betas: tuple[float, float] = (0.9, 0.999),
        mixup: float = 0.8,
        cutmix: float = 1.0,
        label_smoothing: float = 0.1,
        trainable_blocks: int | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__(model, pretrained, base_lr, lr, min_lr, weight_decay, warmup_epochs, multilabel)
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if mixup < 0 or cutmix < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"mixup and cutmix must be >= 0 and label_smoothing in [0, 1), got {mixup}, {cutmix}, {label_smoothing}"
            )
        if multilabel and cutmix > 0:
            raise ValueError(f"multilabel fine-tuning mixes with MixUp only, got cutmix={cutmix}: set cutmix: 0")
        if multilabel and label_smoothing > 0:
            raise ValueError(
                f"multilabel fine-tuning uses no label smoothing, got label_smoothing={label_smoothing}: "
                "set label_smoothing: 0"
            )
        depth = len(model.blocks)
        if trainable_blocks is not None and not 0 <= trainable_blocks <= depth:
            raise ValueError(
                f"trainable_blocks must be between 0 and the model's depth {depth}, got {trainable_blocks}"
            )
        self.layer_decay = layer_decay
        self.betas = tuple(betas)
        self.label_smoothing = label_smoothing
        self.mixup = mixup
        self.trainable_blocks = trainable_blocks
        if isinstance(model.head, nn.Linear):
            nn.init.trunc_normal_(model.head.weight, std=2e-5)
            nn.init.zeros_(model.head.bias)
        if trainable_blocks is not None:
            frozen = [model.patch_embed, *model.blocks[: depth - trainable_blocks]]
            for module in frozen:
                module.requires_grad_(False)
            model.cls_token.requires_grad_(False)
            model.pos_embed.requires_grad_(False)
        # torchvision's MixUp / CutMix one-hot integer labels: multi-hot targets are mixed by mix_multilabel.
        mixers = []
        if mixup > 0 and not multilabel:
            mixers.append(v2.MixUp(alpha=mixup, num_classes=self.num_classes))
        if cutmix > 0:
            mixers.append(v2.CutMix(alpha=cutmix, num_classes=self.num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def configure_optimizers(self):
        groups = param_groups_layer_decay(
            self.model,
            self.weight_decay,
            self.layer_decay,
            no_weight_decay=self.model.no_weight_decay(),
            shapes=self._param_shapes,
        )
        return torch.optim.AdamW(groups, lr=self.base_lr, betas=self.betas)

    def soft_targets(self, targets: Tensor) -> Tensor:
        """Label smoothing of (mixed) one-hot targets: ``(1 - eps) * y + eps / K``, as timm's mixup targets."""
        return targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes

    def mix_multilabel(self, imgs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """MixUp of a batch with multi-hot targets: ``lam ~ Beta(mixup, mixup)`` (torch's global generator, one
        ``lam`` per batch), each image and target row mixed with the batch's flip: ``lam * x + (1 - lam) * x.flip(0)``.
        The targets stay in [0, 1]."""
        alpha = torch.tensor(float(self.mixup))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        targets = targets.float()
        mixed_imgs = imgs * lam + imgs.flip(0) * (1.0 - lam)
        mixed_targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return mixed_imgs, mixed_targets

    def training_step(self, batch, batch_idx: int) -> Tensor:
        imgs, targets = batch[0], batch[1]
        if self.multilabel:
            if self.mixup > 0:
                imgs, targets = self.mix_multilabel(imgs, targets)
            loss = self.loss(self(imgs), targets)
            self.log_train_loss(loss, imgs.shape[0])
            return loss
        if self.mix is not None:
            imgs, soft = self.mix(imgs, targets)
        else:
            soft = F.one_hot(targets, self.num_classes).to(imgs.dtype)
        logits = self(imgs)
        loss = torch.sum(-self.soft_targets(soft) * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        self.log_train_loss(loss, imgs.shape[0])
        return loss
