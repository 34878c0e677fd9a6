"""The shared training data rule in detection's endless mode: the stream depends only on (seed, rank, world size),
ranks split each epoch, a stream started at sample k equals the full stream from k (what resume relies on), it walks
the same epochs as classification's epoch mode, and augmentation is a function of (seed, epoch, sample index)
whatever the number of DataLoader workers."""
import itertools

import numpy as np
import pytest
import torch

from resbackbones.data.det_transforms import build_det_transforms
from resbackbones.engine.data_loading import ResumableSampler, SampleSeeded, make_loader


def _stream(size, n, *, seed=0, rank=0, world=1, start=0):
    sampler = ResumableSampler(range(size), num_replicas=world, rank=rank, seed=seed, endless=True)
    sampler.set_start(start)
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_deterministic_and_resumable():
    full = _stream(10, 35, seed=3)
    assert full == _stream(10, 35, seed=3)
    assert [e for e, _ in full] == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 5
    assert sorted(i for _, i in full[:10]) == list(range(10)) == sorted(i for _, i in full[10:20])
    assert full[:10] != full[10:20]  # a new permutation each epoch
    for start in (1, 9, 10, 17):
        assert _stream(10, 35 - start, seed=3, start=start) == full[start:]
    assert _stream(10, 10, seed=4) != full[:10]


def test_endless_mode_walks_the_epochs_of_epoch_mode():
    for epoch in range(3):
        sampler = ResumableSampler(range(10), num_replicas=2, rank=1, seed=5)
        sampler.set_epoch(epoch)
        assert _stream(10, 15, seed=5, rank=1, world=2)[5 * epoch:5 * epoch + 5] == [(epoch, i) for i in sampler]


def test_ranks_split_each_epoch():
    parts = [_stream(10, 5, rank=r, world=2) for r in range(2)]
    assert sorted(i for _, i in parts[0] + parts[1]) == list(range(10))


def test_fewer_samples_than_processes_is_refused():
    with pytest.raises(ValueError, match="1 sample.*fewer than the 2 processes"):
        ResumableSampler(range(1), num_replicas=2, rank=0, endless=True)
    with pytest.raises(TypeError, match="no length"):
        len(ResumableSampler(range(4), endless=True))


class _Flips(torch.utils.data.Dataset):
    """A detection-shaped dataset whose only augmentation is a random flip: item i returns whether it was flipped."""

    def __init__(self, size):
        self.size = size
        self.transforms = build_det_transforms(train=True, flip_prob=0.5)
        self.image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        image, _ = self.transforms(self.image, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0)})
        return int(image[0, 0, 0] != 0)  # pixel (0, 0) is 0 unless the image was flipped


def _flips(workers, start=0, n=24):
    sampler = ResumableSampler(range(8), seed=1, endless=True)
    sampler.set_start(start)
    loader = make_loader(SampleSeeded(_Flips(8), seed=1), batch_size=4, sampler=sampler, workers=workers,
                         generator=torch.Generator().manual_seed(0))
    return torch.cat(list(itertools.islice(iter(loader), n // 4))).tolist()


def test_augmentation_depends_only_on_seed_epoch_and_index():
    flips = _flips(0)
    assert 0 < sum(flips) < len(flips)  # the flip is random...
    assert flips == _flips(0) == _flips(2)  # ...and the same with any number of workers
    assert _flips(0, start=4, n=20) == flips[4:]  # and after a resume
