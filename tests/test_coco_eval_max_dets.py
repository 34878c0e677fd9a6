"""max_dets (COCOeval params.maxDets) for crowded sets: the fast backend equals pycocotools run with the same
maxDets bit for bit, AP is read at maxDets[2] (pycocotools' summarize() reports -1 there), and on the real DSB2018
nuclei val set ground truth scored as detections reaches AP 1.0 only once maxDets[2] covers its 250 nuclei."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from coco_synthetic import synthetic_coco  # noqa: E402

from resbackbones.config import ConfigError, load_config  # noqa: E402
from resbackbones.evaluation.coco import CocoEvalError, _run, evaluate_coco, format_stats  # noqa: E402

CROWDED = (1, 10, 250)


def _crowded():
    """One category, 150 objects and 300 detections per image: maxDets 100 cuts off true positives."""
    return synthetic_coco(num_images=12, dets_per_image=300, gt_per_image=150, num_categories=1, seed=5)


@pytest.mark.parametrize("backend", ["fast", "pycocotools"])
def test_crowded_max_dets_equal_pycocotools_arrays_and_stats(backend):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _crowded()
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    reference = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
    reference.params.maxDets = list(CROWDED)
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    ours = _run(gt, copy.deepcopy(dets), "bbox", backend, CROWDED)
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(ours.eval[key], reference.eval[key]), key
    assert list(ours.stats[1:]) == list(reference.stats[1:])
    # pycocotools' summarize() looks for maxDets == 100 for stats[0]; ours reads it at maxDets[2] with the same
    # expression (mean of the defined precision values, all areas).
    assert reference.stats[0] == -1
    precision = reference.eval["precision"][:, :, :, 0, 2]
    assert ours.stats[0] == np.mean(precision[precision > -1])


def test_raising_max_dets_recovers_what_100_cut_off():
    gt, dets = _crowded()
    default = evaluate_coco(gt, dets)["bbox"].stats
    crowded = evaluate_coco(gt, dets, max_dets=CROWDED)["bbox"].stats
    assert crowded["AP"] > default["AP"] and crowded["AR100"] > default["AR100"]
    assert (crowded["AR1"], crowded["AR10"]) == (default["AR1"], default["AR10"])
    assert "maxDets=250] = " in format_stats(crowded, CROWDED)


@pytest.mark.parametrize("bad", [(1, 10), (10, 1, 100), (0, 10, 100), (1, 10, 10), (1, 10, 99.5)])
def test_bad_max_dets_named_in_one_line(bad):
    gt, dets = synthetic_coco(num_images=2, seed=1)
    with pytest.raises(CocoEvalError, match=r"max_dets must be three increasing positive ints.*got") as info:
        evaluate_coco(gt, dets, max_dets=bad)
    assert "\n" not in str(info.value)


def test_config_key_refuses_a_bad_value(tmp_path):
    from resbackbones.config.det import DetTrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("model: {num_classes: 1}\ntest: {max_dets: [1, 400]}\n")
    with pytest.raises(ConfigError, match=r"test\.max_dets must be three increasing"):
        load_config(DetTrainConfig, str(path), [])


def test_dsb2018_ground_truth_needs_max_dets_above_its_most_crowded_image():
    """Ground truth scored as detections: AP 0.88 on val at maxDets 100 (bbox and segm alike; 0.86 on train, the
    two numbers SOURCE.md quotes), 1.0 once maxDets[2] >= the most instances in one image (250 in val)."""
    val = json.loads(require_shared("data/dsb2018_nuclei/val.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in val["annotations"]]
    default = evaluate_coco(val, dets, iou_types=("bbox", "segm"))
    raised = evaluate_coco(val, dets, iou_types=("bbox", "segm"), max_dets=(1, 10, 400))
    assert round(default["bbox"].stats["AP"], 2) == 0.88 and round(default["segm"].stats["AP"], 2) == 0.88
    assert raised["bbox"].stats["AP"] == pytest.approx(1.0) and raised["segm"].stats["AP"] == pytest.approx(1.0)
