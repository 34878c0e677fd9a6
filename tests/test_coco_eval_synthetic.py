"""The fast backend is pycocotools bit for bit on a larger synthetic set (crowds, all area ranges, duplicates):
the 12 stats AND the whole precision / recall / scores arrays."""
import copy
from pathlib import Path

import numpy as np
import pytest
from coco_synthetic import synthetic_coco  # noqa: E402

from resbackbones.evaluation.coco import _run, evaluate_coco  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_backend_equals_pycocotools_bit_for_bit(seed):
    gt, dets = synthetic_coco(num_images=120, dets_per_image=40, gt_per_image=9, num_categories=12, seed=seed)
    dets[5]["score"] = dets[6]["score"]  # exact score ties must break the same way (stable sorts)
    reference = _run(gt, copy.deepcopy(dets), "bbox", "pycocotools")
    fast = _run(gt, copy.deepcopy(dets), "bbox", "fast")
    assert list(fast.stats) == list(reference.stats)
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(fast.eval[key], reference.eval[key]), key


def test_auto_backend_is_the_exact_one():
    gt, dets = synthetic_coco(num_images=30, seed=3)
    assert evaluate_coco(gt, dets)["bbox"].backend == "fast"
