"""Per-category AP / AP50 (detectron2's COCOEvaluator._derive_coco_results: precision[:, :, k, 0, -1], mean of the
entries > -1) against a hand computation on one image, through both backends and through tools/eval_coco.py.

The pair, worked by hand (COCOeval: 10 IoU thresholds .50:.05:.95, 101 recall points, interpolated precision):
  "a" (id 1): two objects. d1 on A1 at IoU 1 (score .9), d2 on A2 at IoU .72 (score .8). At the 5 thresholds
      <= .70 both are hits: precision 1 at every recall point -> 101 ones. At the 5 above, d2 misses: recall
      reaches .5 only, so recall points 0 .. .50 (51 of them) have precision 1 and the other 50 have 0.
      AP = (5 * 101 + 5 * 51) / 1010 = 760 / 1010; AP50 = 1.
  "b" (id 2): one object. d3 elsewhere (score .95, a false positive first), d4 on B1 at IoU .62 (score .7).
      At .50, .55, .60: hit after one false positive: precision 1/2 at every recall point; above: no hit, 0.
      AP = 3 * 101 * 0.5 / 1010 = 0.15; AP50 = 0.5.
  "c" (id 3): no ground truth, one detection: AP and AP50 undefined (-1; detectron2 writes NaN).
"""
import importlib.util
import json

import pytest

from conftest import REPO
from resbackbones.evaluation import evaluate_coco

GT = {"images": [{"id": 7, "file_name": "x.png", "width": 100, "height": 100}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
      "annotations": [
          {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
          {"id": 2, "image_id": 7, "category_id": 1, "bbox": [40, 40, 10, 10], "area": 100.0, "iscrowd": 0},
          {"id": 3, "image_id": 7, "category_id": 2, "bbox": [20, 60, 10, 10], "area": 100.0, "iscrowd": 0}]}
DETS = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},      # d1: IoU 1
        {"image_id": 7, "category_id": 1, "bbox": [40, 40, 10, 7.2], "score": 0.8},   # d2: IoU .72
        {"image_id": 7, "category_id": 2, "bbox": [70, 70, 10, 10], "score": 0.95},   # d3: no object there
        {"image_id": 7, "category_id": 2, "bbox": [20, 60, 10, 6.2], "score": 0.7},   # d4: IoU .62
        {"image_id": 7, "category_id": 3, "bbox": [5, 80, 10, 10], "score": 0.5}]     # d5: no "c" at all
HAND = {"a": {"id": 1, "AP": 760 / 1010, "AP50": 1.0},
        "b": {"id": 2, "AP": 3 * 101 * 0.5 / 1010, "AP50": 0.5},
        "c": {"id": 3, "AP": -1.0, "AP50": -1.0}}


@pytest.mark.parametrize("backend", ["pycocotools", "fast"])
def test_per_category_ap_equals_the_hand_computation(backend):
    result = evaluate_coco(GT, DETS, iou_types=("bbox",), backend=backend)["bbox"]
    assert result.per_category_report() == HAND  # exact: every precision entry is 0, 1/2 or 1
    assert result.per_category == {1: HAND["a"]["AP"], 2: HAND["b"]["AP"], 3: -1.0}
    # COCOeval's overall AP is the mean over the categories with ground truth
    assert result.stats["AP"] == pytest.approx((HAND["a"]["AP"] + HAND["b"]["AP"]) / 2, abs=1e-15)
    table = result.table().splitlines()
    assert table[0].split() == ["category", "id", "AP", "(0-1)", "AP50"]
    assert table[1].split() == ["a", "1", f"{760 / 1010:.3f}", "1.000"] and table[2].split() == ["b", "2", "0.150",
                                                                                                 "0.500"]
    assert table[3] == "(1 categories without ground truth: AP undefined)"


def test_names_shared_by_two_categories_stay_apart():
    gt = dict(GT, categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "a"}, {"id": 3, "name": "c"}])
    report = evaluate_coco(gt, DETS)["bbox"].per_category_report()
    assert list(report) == ["a (id 1)", "a (id 2)", "c"] and report["a (id 2)"]["AP50"] == 0.5


def test_eval_coco_writes_per_category(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "dt.json").write_text(json.dumps(DETS))
    spec = importlib.util.spec_from_file_location("eval_coco_per_category", REPO / "tools" / "eval_coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json"),
                      "--out", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["per_category"] == {"bbox": HAND} and stats["ap_unit"] == "fraction (0-1)"
    assert "AP (0-1)" in capsys.readouterr().out
