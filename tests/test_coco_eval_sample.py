"""COCO evaluation on the real COCO sample: GT as detections scores 1.0; perturbed detections give exactly
pycocotools' 12 numbers (and per-category AP) with both backends."""
import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resbackbones.evaluation import STAT_NAMES, CocoEvalError, evaluate_coco

GT = Path(__file__).resolve().parent / "fixtures" / "coco_sample" / "annotations.json"


def _gt():
    with open(GT) as handle:
        return json.load(handle)


def gt_as_detections(gt):
    """Every non-crowd annotation as a score-1 detection with an RLE mask (crowd regions are never matched)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    dets = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        rle = coco.annToRLE(ann)
        rle["counts"] = rle["counts"].decode("ascii")
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]),
                     "score": 1.0, "segmentation": rle})
    return dets


def perturbed_detections(gt, seed=0):
    """Jittered boxes and masks, dropped detections, false positives on random categories, random scores."""
    rng = random.Random(seed)
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for det in gt_as_detections(gt):
        if rng.random() < 0.2:
            continue  # a miss
        x, y, w, h = det["bbox"]
        jitter = [rng.gauss(0, 0.08) for _ in range(4)]
        box = [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])]
        mask = mask_util.decode(det["segmentation"])
        shift_x, shift_y = rng.randint(-4, 4), rng.randint(-4, 4)
        mask = np.roll(np.roll(mask, shift_x, axis=1), shift_y, axis=0)
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        category = det["category_id"] if rng.random() < 0.9 else rng.choice(cat_ids)
        dets.append({**det, "bbox": [round(v, 2) for v in box], "segmentation": rle, "category_id": category,
                     "score": round(rng.random(), 4)})
    for _ in range(40):  # false positives of all sizes
        img = images[rng.choice(list(images))]
        w, h = rng.uniform(4, img["width"] / 2), rng.uniform(4, img["height"] / 2)
        x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
        mask = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        mask[int(y): int(y + h), int(x): int(x + w)] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        dets.append({"image_id": img["id"], "category_id": rng.choice(cat_ids), "bbox": [x, y, w, h],
                     "score": round(rng.random(), 4), "segmentation": rle})
    return dets


def reference_stats(gt, dets, iou_type):
    """pycocotools used directly, as everyone does (segm results without bbox, as detectron2 evaluates them)."""
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    dets = copy.deepcopy(dets)
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox")
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(STAT_NAMES, [float(v) for v in evaluator.stats])), evaluator


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_ground_truth_as_detections_scores_one(backend):
    gt = _gt()
    assert any(a.get("iscrowd") for a in gt["annotations"])  # the crowd region must be ignored, not missed
    result = evaluate_coco(GT, gt_as_detections(gt), iou_types=("bbox", "segm"), backend=backend)
    for iou_type in ("bbox", "segm"):
        stats = result[iou_type].stats
        assert stats["AP"] == stats["AP50"] == stats["AP75"] == 1.0, (iou_type, stats)
        assert stats["AR100"] == 1.0
        used = {a["category_id"] for a in gt["annotations"]}
        assert all(result[iou_type].per_category[c] == pytest.approx(1.0, abs=1e-12) for c in used)
        assert all(v == -1.0 for c, v in result[iou_type].per_category.items() if c not in used)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_perturbed_detections_match_pycocotools_exactly(backend, seed):
    gt = _gt()
    dets = perturbed_detections(gt, seed)
    result = evaluate_coco(str(GT), dets, iou_types=("bbox", "segm"), backend=backend)
    for iou_type in ("bbox", "segm"):
        expected, evaluator = reference_stats(gt, dets, iou_type)
        assert result[iou_type].stats == expected, (iou_type, result[iou_type].stats, expected)
        assert 0.0 < expected["AP"] < 1.0
        precision = evaluator.eval["precision"]
        for k, cat_id in enumerate(evaluator.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            assert result[iou_type].per_category[cat_id] == (float(values.mean()) if values.size else -1.0)


def test_input_errors_name_the_problem(tmp_path):
    gt = _gt()
    dets = gt_as_detections(gt)
    with pytest.raises(CocoEvalError, match="not found"):
        evaluate_coco(tmp_path / "missing.json", dets)
    with pytest.raises(CocoEvalError, match="empty"):
        evaluate_coco(GT, [])
    with pytest.raises(CocoEvalError, match="category_id 999"):
        evaluate_coco(GT, [{**dets[0], "category_id": 999}])
    with pytest.raises(CocoEvalError, match="image_id 123"):
        evaluate_coco(GT, [{**dets[0], "image_id": 123}])
    with pytest.raises(CocoEvalError, match="segmentation"):
        evaluate_coco(GT, [{k: v for k, v in dets[0].items() if k != "segmentation"}], iou_types=("segm",))
    with pytest.raises(CocoEvalError, match="iou type"):
        evaluate_coco(GT, dets, iou_types=("keypoints",))
