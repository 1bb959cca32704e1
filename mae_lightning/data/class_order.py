"""An evaluation order that covers the classes early, for a validation that reads only its first batches.

``limit_val_batches`` cuts validation to its first batches. On a folder listed class after class those hold one
class, and the accuracy measured is that class's; in a class-interleaved order any prefix holds as many as it can.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


def labels_of(dataset: Dataset) -> list[int] | None:
    """The labels of ``dataset`` without reading its samples (``targets``, or STL-10's ``labels``); None when it
    does not list them, or when it holds no labels (every target -1)."""
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            labels = [int(label) for label in labels]
            return labels if len(labels) == len(dataset) and set(labels) != {-1} else None  # type: ignore[arg-type]
    return None


def class_interleaved_order(labels: list[int], seed: int) -> list[int]:
    """The indices of ``labels`` in rounds that take one index of each class (in label order) per round.

    Each class's indices are shuffled by ``seed`` first, so a round is a random draw of every class; the
    order is a function of the labels and the seed alone (the same every epoch and on any number of processes).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    shuffled = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    rounds = max(len(members) for members in shuffled)
    return [members[r] for r in range(rounds) for members in shuffled if r < len(members)]
