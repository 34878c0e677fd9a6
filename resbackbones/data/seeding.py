"""Per-sample augmentation seeds: the randomness of sample i in epoch e is a function of (seed, e, i) only, so it is
the same whatever the number of DataLoader workers or processes, and again after a resume.

Used by classification (cls_transforms.TransformedDataset) and detection (engine.data_loading.SampleSeeded with
det_transforms.DetectionAugmentation.reseed).
"""
import random

import albumentations as A
import numpy as np


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` (of the underlying dataset) in `epoch` of a run seeded `seed`."""
    return ((seed * 100_003 + epoch) * 10_000_019 + index) % (2 ** 63)


def reseed_compose(compose: A.Compose, seed: int) -> None:
    """Make the next call of `compose` a function of `seed`.

    One fresh stream shared by the compose and all its transforms: draws are sequential, so e.g. a crop offset and a
    flip are independent, and seeding costs two generator constructions (~35 us) per sample.
    """
    numpy_rng = np.random.default_rng(seed)
    python_rng = random.Random(seed)
    for transform in [compose, *compose.transforms]:
        transform.random_generator = numpy_rng
        transform.py_random = python_rng
