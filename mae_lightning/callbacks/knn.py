"""A cheap view of representation quality during pretraining: kNN accuracy and an online linear probe.

MAE features are known to score low under kNN and linear probes compared with contrastive methods
(the paper's point is that fine-tuning is the real test): watch these numbers rise, do not compare
them with DINO's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from mae_lightning.ops import POOLS, pool_tokens
from mae_lightning.runtime.strategy_forward import forward_through_strategy


def knn_scores(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    exclude_self: bool = False,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN class scores (InstDisc / DINO): cosine similarity, top-k, votes weighted ``exp(sim / T)``.

    Args:
        queries: (M, D) features to classify.
        bank: (N, D) features with known labels.
        bank_labels: (N,) labels in ``[0, num_classes)``.
        num_classes: number of classes.
        k: neighbours that vote.
        temperature: the softmax temperature of the votes.
        exclude_self: the queries are the bank (M == N, same order): leave each sample out of its own vote.
        chunk_size: queries per block of the similarity matrix (bounds memory to chunk_size x N).

    Returns (M, num_classes) scores; the prediction is their argmax.
    """
    if exclude_self and queries.shape[0] != bank.shape[0]:
        raise ValueError("exclude_self needs the queries to be the bank")
    k = min(k, bank.shape[0] - int(exclude_self))
    if k < 1:
        raise ValueError("the kNN bank needs at least one sample besides the query")
    queries = F.normalize(queries.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start : start + chunk_size] @ bank.T
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = -float("inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        out.append(scores.scatter_add_(1, bank_labels[top_idx], weights))
    return torch.cat(out)


class KNNMonitor(Callback):
    """kNN top-1 and an online linear classifier on frozen encoder features, logged every validation epoch.

    * ``val/knn_top1``: features of the unmasked validation images (cls token or mean of the patch
      tokens), each classified by its k nearest neighbours among the other validation images
      (leave-one-out, cosine), gathered from every process.
    * ``val/online_linear_top1``: a linear layer trained on the detached features of the masked
      training forward pass (free: the encoder runs anyway), with its own AdamW, and evaluated on
      the masked features of the validation pass (the same fixed masks as ``val/loss``). Its gradients
      are averaged over processes, so every copy stays the same under DDP. It never touches the encoder.

    The unmasked features are encoded through the strategy's wrapper, so the monitor works under DDP and FSDP.
    Samples with the label -1 (unlabelled data) are skipped; with no labels at all nothing is logged.
    Needs a pretraining module whose training and validation steps return ``{"loss", "latent"}`` and
    that has a ``forward_features(imgs) -> (N, 1 + L, D)`` method (:class:`~mae_lightning.MAEPretraining`).

    Args:
        num_classes: classes of the labels.
        k: neighbours that vote.
        temperature: temperature of the neighbour weights.
        pool: ``"cls"`` or ``"mean"``: which features to probe.
        online_lr: learning rate of the online linear classifier.
        every_n_epochs: run the kNN every this many validation epochs.
    """

    def __init__(
        self,
        num_classes: int,
        k: int = 20,
        temperature: float = 0.07,
        pool: str = "cls",
        online_lr: float = 1e-3,
        every_n_epochs: int = 1,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if k < 1 or temperature <= 0 or online_lr <= 0 or every_n_epochs < 1:
            raise ValueError(
                f"k, temperature, online_lr and every_n_epochs must be positive, got {k}, {temperature}, "
                f"{online_lr}, {every_n_epochs}"
            )
        if pool not in POOLS:
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.num_classes = num_classes
        self.k = k
        self.temperature = temperature
        self.pool = pool
        self.online_lr = online_lr
        self.every_n_epochs = every_n_epochs
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.online_accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self._features: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._pending_state: dict | None = None

    # ------------------------------------------------------------------ set-up and state
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.head is None:
            dim = pl_module.model.patch_embed.proj.out_channels
            self.head = nn.Linear(dim, self.num_classes)
            self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.online_lr, weight_decay=0.0)
        if self._pending_state is not None:
            self.head.load_state_dict(self._pending_state["head"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to(pl_module.device)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to(pl_module.device)

    def _to(self, device: torch.device) -> None:
        self.head.to(device)
        self.online_accuracy.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    state[key] = value.to(device)

    def state_dict(self) -> dict:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._pending_state = state_dict
            if self.head is not None:
                self.setup(None, None, "fit")  # type: ignore[arg-type]

    # ------------------------------------------------------------------ online linear classifier
    def _latent(self, outputs) -> Tensor | None:
        if isinstance(outputs, dict) and "latent" in outputs:
            return pool_tokens(outputs["latent"], self.pool).detach().float()
        return None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        feats = self._latent(outputs)
        if feats is None:
            raise TypeError("KNNMonitor needs a training_step that returns {'loss': ..., 'latent': ...}")
        targets = batch[1]
        labelled = (targets >= 0).to(feats.dtype)
        # Every process runs the same operations (also with no labels in its batch): the all-reduce cannot hang.
        with torch.enable_grad(), torch.autocast(device_type=feats.device.type, enabled=False):
            losses = F.cross_entropy(self.head(feats), targets.clamp(min=0), reduction="none")
            loss = (losses * labelled).sum() / labelled.sum().clamp(min=1.0)
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            for param in self.head.parameters():
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad /= trainer.world_size
        self.optimizer.step()

    # ------------------------------------------------------------------ validation
    def _active(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._features, self._targets = [], []
        self.online_accuracy.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._active(trainer):
            return
        imgs, targets = batch[0], batch[1]
        tokens = forward_through_strategy(trainer, pl_module, "forward_features", imgs)
        self._features.append(pool_tokens(tokens, self.pool).float())
        self._targets.append(targets)
        feats = self._latent(outputs)
        if feats is not None:
            with torch.autocast(device_type=feats.device.type, enabled=False):
                self.online_accuracy.update(self.head(feats), targets)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer) or not self._features:
            return
        features = torch.cat(self._features)
        targets = torch.cat(self._targets)
        self._features, self._targets = [], []
        if trainer.world_size > 1:
            # DistributedSampler gives every process the same number of samples, as all_gather needs.
            features = pl_module.all_gather(features).flatten(0, 1)
            targets = pl_module.all_gather(targets).flatten(0, 1)
        labelled = targets >= 0
        online = self.online_accuracy.compute()  # synchronised over processes by torchmetrics
        if labelled.sum() < 2:
            rank_zero_warn("KNNMonitor: the validation data has no labels (target -1); nothing to measure")
            return
        features, targets = features[labelled], targets[labelled]
        scores = knn_scores(features, features, targets, self.num_classes, self.k, self.temperature, exclude_self=True)
        knn_top1 = multiclass_accuracy(scores, targets, self.num_classes, average="micro")
        # Every process holds the same gathered values: no further reduction needed.
        pl_module.log("val/knn_top1", knn_top1, sync_dist=False)
        pl_module.log("val/online_linear_top1", online, sync_dist=False)
