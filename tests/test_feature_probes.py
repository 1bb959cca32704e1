"""kNN and linear probes on cached features: known answers on toy sets."""

from __future__ import annotations

import math

import pytest
import torch

from mae_lightning.feature_probes import knn_top1, linear_probe_top1


def test_knn_top1_counts_the_weighted_vote():
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [1.0, 1.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[5.0, 0.2], [0.0, 0.5], [1.0, 0.9]])
    # the weighted vote gives 0, 1, 1 (see callbacks/test_callbacks.py); two of three right when the third is labelled 0
    assert knn_top1((bank, labels), (queries, torch.tensor([0, 1, 1])), 2, k=3, temperature=0.1) == 1.0
    assert knn_top1((bank, labels), (queries, torch.tensor([0, 1, 0])), 2, k=3, temperature=0.1) == pytest.approx(2 / 3)


def blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes around directions 120 degrees apart in the first two dims, plus a large-variance nuisance dim."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    angles = labels.float() * 2 * math.pi / 3
    x = torch.randn(len(labels), 3, generator=generator)
    x[:, 0] += 4 * angles.cos()
    x[:, 1] += 4 * angles.sin()
    x[:, 2] *= 1e4  # BatchNorm in the head takes the scale away
    return x * 50, labels


def test_linear_probe_separates_separable_classes_and_not_random_labels():
    train, test = blobs(200, seed=0), blobs(100, seed=1)
    assert linear_probe_top1(train, test, num_classes=3, epochs=100, batch_size=64, base_lr=10.0) >= 0.98
    shuffled = (train[0], train[1][torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(2))])
    assert linear_probe_top1(shuffled, test, num_classes=3, epochs=100, batch_size=64, base_lr=10.0) < 0.6
