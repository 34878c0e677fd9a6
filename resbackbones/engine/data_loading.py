"""Loaders for training: a DistributedSampler that can start mid-epoch, deterministic worker seeding."""
import random
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also used with one process) whose epoch can start at sample `start_index` of this rank.

    The permutation depends only on (seed, epoch), so a resumed run sees exactly the remaining samples.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def seed_worker(worker_id: int) -> None:
    """numpy/random in each worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, sampler=None, workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False, generator: Optional[torch.Generator] = None) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, drop_last=drop_last, worker_init_fn=seed_worker, generator=generator,
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
    )
