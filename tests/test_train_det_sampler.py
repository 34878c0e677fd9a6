"""IterationSampler: the training stream depends only on (seed, rank, world size), ranks split each epoch, and a
stream started at sample k equals the full stream from k (what resume relies on)."""
import itertools

from resbackbones.engine.det_trainer import IterationSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_deterministic_and_resumable():
    full = _take(IterationSampler(10, seed=3), 35)
    assert full == _take(IterationSampler(10, seed=3), 35)
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert full[:10] != full[10:20]  # a new permutation each epoch
    for start in (1, 9, 10, 17):
        assert _take(IterationSampler(10, seed=3, start=start), 35 - start) == full[start:]
    assert _take(IterationSampler(10, seed=4), 10) != full[:10]


def test_ranks_split_each_epoch():
    parts = [_take(IterationSampler(10, seed=0, rank=r, world_size=2), 5) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(10))
