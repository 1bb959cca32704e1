"""A training DataLoader whose epoch, data order and augmentations survive a restart mid-epoch.

Lightning restarts an interrupted epoch from the first batch of a fresh iterator unless the DataLoader
itself is stateful (has ``state_dict``/``load_state_dict``, which Lightning stores in the checkpoint).
A resumed epoch is the one that would have happened because its order comes from ``(seed, epoch)`` alone
(:class:`ResumableSampler`, which skips the batches already trained on), each sample's augmentation from
``(seed, epoch, index)`` (:class:`PerSampleSeeds`: not from worker count, prefetching or the global random
state), and the workers' base seed from the loader's own generator (``MAEDataModule``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffle by ``(seed, epoch)``, yield ``(index, epoch)`` keys, and start an epoch part-way when resumed.

    With ``groups`` (the sizes of consecutive index ranges stored together, such as the shards of a
    streaming dataset) the order keeps reads local: the groups are shuffled, and the indices of each run
    of ``window`` groups are shuffled among themselves, so all processes read from ``window`` groups at
    a time instead of from the whole set.

    Args:
        dataset: the dataset to sample from.
        num_replicas: number of processes sharing the data.
        rank: this process's index among them.
        seed: seed of the permutations (the same on every process); the tail that does not divide evenly
            among the processes is dropped.
        groups: sizes of the consecutive index ranges read together (their sum is ``len(dataset)``), or None.
        window: how many groups are read at a time when ``groups`` is given.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        groups: Sequence[int] | None = None,
        window: int = 8,
    ) -> None:
        if groups is not None and sum(groups) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"groups add up to {sum(groups)}, but the dataset holds {len(dataset)} samples")  # type: ignore[arg-type]
        # With groups, DistributedSampler deals out positions in the grouped order drawn here.
        self.grouped = groups is not None
        super().__init__(dataset, num_replicas, rank, shuffle=not self.grouped, seed=seed, drop_last=True)
        self.groups = list(groups) if groups is not None else None
        self.window = window
        self._resume_epoch: int | None = None
        self._resume_offset = 0

    def grouped_order(self) -> list[int]:
        """The epoch's order of all indices: shuffled groups, shuffled within each window of groups."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        starts = np.cumsum([0, *self.groups[:-1]])
        group_order = torch.randperm(len(self.groups), generator=generator).tolist()
        order: list[int] = []
        for first in range(0, len(group_order), self.window):
            members = torch.cat(
                [torch.arange(starts[g], starts[g] + self.groups[g]) for g in group_order[first : first + self.window]]
            )
            order += members[torch.randperm(len(members), generator=generator)].tolist()
        return order

    def resume(self, epoch: int, samples_done: int) -> None:
        """Continue ``epoch`` after its first ``samples_done`` samples (of this process's share)."""
        self.set_epoch(epoch)
        self._resume_epoch, self._resume_offset = epoch, samples_done

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        if self.grouped:
            order = self.grouped_order()
            indices = [order[position] for position in indices]
        start = 0
        if self._resume_epoch == self.epoch:
            start = self._resume_offset
            self._resume_epoch, self._resume_offset = None, 0  # only the interrupted epoch starts late
        return iter([(index, self.epoch) for index in indices[start:]])


class PerSampleSeeds(Dataset):
    """Run ``dataset[index]`` with the random state seeded from ``(seed, epoch, index)``.

    The global states of ``torch``, ``random`` and ``numpy`` are restored afterwards, so the caller's
    random stream (the masking, in the main process with ``num_workers=0``) is left as it was.

    Args:
        dataset: a map-style dataset whose transforms draw from the global random state.
        seed: the run's data seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # `samples`, `targets`, `skipped`, ... of the wrapped dataset stay reachable.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, dtype=np.uint32)
        sample_seed = (int(state[0]) << 31) ^ int(state[1])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(int(state[1]))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableDataLoader(DataLoader):
    """A DataLoader over :class:`ResumableSampler` that Lightning saves and restores with the checkpoint.

    Args:
        dataset: a :class:`PerSampleSeeds` dataset.
        sampler: the :class:`ResumableSampler` of ``dataset``.
        position: returns ``{"seed", "epoch", "batches_done"}`` when a checkpoint is saved: the
            trainer knows how many batches were trained on, the loader (which prefetches ahead) does not.
        **kwargs: the other DataLoader arguments.
    """

    def __init__(
        self, dataset: Dataset, sampler: ResumableSampler, position: Callable[[], dict[str, int]], **kwargs: Any
    ) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        return self.position()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.seed = state["seed"]
        self.sampler.resume(state["epoch"], state["batches_done"] * self.batch_size)
