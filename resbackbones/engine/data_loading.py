"""Training loaders of both tasks: one sampler rule, per-sample augmentation seeds, deterministic worker seeding.

Data order: epoch e is the permutation DistributedSampler draws from (seed + e); rank r of P takes every P-th index
of it (drop_last: every rank gets len // P samples). Both tasks train in iterations and walk the epochs end to end
(endless mode); classification drops each epoch's last partial batch (epoch_samples), so its epochs are whole
iterations and one epoch's batches are the ones it always had. Augmentation comes from (seed, epoch, sample index)
(data/seeding.py), so a resumed run sees exactly the batches, and the augmented images, of an uninterrupted one.
"""
import random
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.seeding import sample_seed


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also used with one process) that can start at sample `start_index` of this rank.

    Epoch mode (default): one epoch (set_epoch), starting at `start_index` into it. Endless mode: the epochs
    `start_index // epoch_samples`, ... one after another, starting `start_index` samples into this rank's stream,
    and yielding (epoch, index) pairs so that SampleSeeded / EpochKeyed can seed each sample's augmentation from its
    epoch in any worker process. epoch_samples (endless mode; default all of this rank's samples): how many of each
    epoch's samples are used. The permutation depends only on (seed, epoch), so a resumed run sees exactly the rest.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, endless: bool = False, epoch_samples: Optional[int] = None):
        if len(dataset) < num_replicas:
            raise ValueError(f"the training set has {len(dataset)} sample(s), fewer than the {num_replicas} "
                             f"processes that would share it")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.endless = endless
        self.start_index = 0
        self.epoch_samples = min(epoch_samples or self.num_samples, self.num_samples)

    def set_start(self, start_index: int) -> None:
        self.start_index = start_index

    def _epoch_indices(self, epoch: int) -> list:
        self.set_epoch(epoch)
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Union[int, Tuple[int, int]]]:
        if not self.endless:
            return iter(self._epoch_indices(self.epoch)[self.start_index:])
        return self._endless()

    def _endless(self) -> Iterator[Tuple[int, int]]:
        epoch, offset = divmod(self.start_index, self.epoch_samples)
        while True:
            for index in self._epoch_indices(epoch)[offset:self.epoch_samples]:
                yield epoch, index
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        if self.endless:
            raise TypeError("an endless ResumableSampler has no length")
        return self.num_samples - self.start_index


class SampleSeeded(Dataset):
    """dataset[(epoch, index)] = base[index], with base.transforms reseeded from (seed, epoch, index) first.

    For datasets that apply their own augmentation (data.coco.CocoDetection with a DetectionAugmentation): pair it
    with an endless ResumableSampler. A base whose transforms cannot be reseeded is returned as it is.
    """

    def __init__(self, base: Dataset, *, seed: int):
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        transforms = getattr(self.base, "transforms", None)
        if hasattr(transforms, "reseed"):
            transforms.reseed(sample_seed(self.seed, epoch, index))
        return self.base[index]


class EpochKeyed(Dataset):
    """dataset[(epoch, index)] = base[index] after base.set_epoch(epoch): for datasets that seed each sample's
    augmentation from (seed, epoch, index) themselves (data.cls_transforms.TransformedDataset). Pair it with an
    endless ResumableSampler; each worker process holds its own copy, so the epoch travels with every key."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        if getattr(self.base, "epoch", None) != epoch:
            self.base.set_epoch(epoch)
        return self.base[index]


def seed_worker(worker_id: int) -> None:
    """numpy/random in each worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, sampler=None, workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False, generator: Optional[torch.Generator] = None, collate_fn=None,
                batch_sampler=None) -> DataLoader:
    """The DataLoader of both trainers. Pass a `generator` seeded from (seed, epoch): creating the loader's iterator
    draws the workers' base seed from it, and must not consume the global RNG that a resume restores. A
    `batch_sampler` (data/loaders.GroupedBatchSampler) replaces batch_size and sampler."""
    if batch_sampler is not None:  # DataLoader refuses batch_size / sampler beside a batch_sampler
        batch_size, sampler = 1, None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, batch_sampler=batch_sampler, shuffle=False,
        num_workers=workers, pin_memory=pin_memory, drop_last=drop_last, worker_init_fn=seed_worker, generator=generator,
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None, collate_fn=collate_fn,
    )
