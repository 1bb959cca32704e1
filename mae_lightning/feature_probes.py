"""Quick probes of features already computed (``predict``'s embeddings.npz, or ``model.embed``): kNN and linear.

The paper's linear probe trains through a frozen encoder with augmentation (:class:`~mae_lightning.LinearProbe`);
on cached features the same head trains in seconds on a CPU, which is what the quality benchmark
and the notebooks use to compare encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mae_lightning.callbacks.knn import knn_scores
from mae_lightning.optim import LARS, scaled_lr, set_lr, warmup_cosine_lr


def knn_top1(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int, k: int = 20, temperature: float = 0.07
) -> float:
    """Top-1 of the weighted kNN (cosine, ``exp(sim / T)`` votes) with ``train`` as the bank.

    Args:
        train: (N, D) features and (N,) labels: the bank.
        test: (M, D) features and (M,) labels: the queries.
    """
    scores = knn_scores(test[0], train[0], train[1], num_classes, k=k, temperature=temperature)
    return (scores.argmax(dim=1) == test[1]).float().mean().item()


def linear_probe_top1(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    epochs: int = 1000,
    batch_size: int = 16384,
    base_lr: float = 0.1,
    warmup_epochs: int = 10,
    seed: int = 0,
) -> float:
    """Test top-1 of the paper's probe head trained on cached features.

    ``BatchNorm1d(affine=False)`` + ``Linear`` (weights N(0, 0.01) truncated), LARS (momentum 0.9, no
    weight decay), ``lr = base_lr * batch_size / 256``, warmup then cosine per step. LARS moves each
    weight by a fixed share of its norm per step, so the head needs many passes: with the defaults
    it is within a point of a converged logistic regression on CIFAR-10 features (benchmarks/RESULTS.md).

    Args:
        train, test: as in :func:`knn_top1`.
        num_classes: number of classes.
        epochs: passes over ``train``.
        batch_size: samples per step (capped at N).
        base_lr: learning rate per 256 samples.
        warmup_epochs: epochs of linear warmup.
        seed: seeds torch's global generator, for the head's initialisation and the sample order.
    """
    torch.manual_seed(seed)
    x, y = train[0].float(), train[1]
    batch_size = min(batch_size, len(x))
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), linear)
    peak_lr = scaled_lr(base_lr, batch_size)
    optimizer = LARS(head.parameters(), lr=peak_lr, weight_decay=0.0)
    steps = len(x) // batch_size
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(x))
        for step in range(steps):
            set_lr(optimizer, warmup_cosine_lr(epoch + step / steps, peak_lr, 0.0, warmup_epochs, epochs))
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        return (head(test[0].float()).argmax(dim=1) == test[1]).float().mean().item()
