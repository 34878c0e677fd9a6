"""COCO ground truth and detections are type-checked before evaluation (resbackbones/data/coco_format.py):
each bad field through tools/eval_coco.py gives exit 2 and one stderr line naming the file, the record and the field;
the training reader refuses wrong types (bad values stay dropped and counted, tests/test_reliability_data.py)."""
import copy
import importlib.util
import json

import cv2
import numpy as np
import pytest

from conftest import REPO
from resbackbones.data.coco import CocoDetection
from resbackbones.data.errors import DataError
from resbackbones.data.coco_format import CocoEvalError, check_detections, check_ground_truth

POLY = [[0, 0, 10, 0, 10, 10, 0, 10]]
GT = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0,
                       "iscrowd": 0, "segmentation": POLY},
                      {"id": 2, "image_id": 1, "category_id": 2, "bbox": [12, 12, 8, 8], "area": 64.0,
                       "iscrowd": 0, "segmentation": [[12, 12, 20, 12, 20, 20, 12, 20]]}]}
RLE = {"size": [32, 32], "counts": "0`0"}  # a valid-looking string; content is not checked here
DET = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9, "segmentation": RLE}


def _tool():
    spec = importlib.util.spec_from_file_location("eval_coco_checks", REPO / "tools" / "eval_coco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, capsys, gt, dets, iou_types=("bbox",)):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    code = _tool().main(["--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json"), "--iou-type",
                         *iou_types])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def _with(path, value):
    """A copy of GT with the field at `path` (keys / indices) set to value (None: deleted)."""
    data = copy.deepcopy(GT)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


GT_CASES = [  # (path, value, iou types, what the line must say)
    (("images", 0, "id"), "1", ("bbox",), "image #0 (id \"1\"): id must be an int"),
    (("annotations", 1, "id"), 2.0, ("bbox",), "annotation #1 (id 2.0): id must be an int"),
    (("annotations", 0, "image_id"), "1", ("bbox",), "annotation #0 (id 1): image_id must be an int"),
    (("annotations", 0, "image_id"), 9, ("bbox",), "image_id 9 is not among the images"),
    (("categories", 1, "id"), True, ("bbox",), "category #1 (id true): id must be an int"),
    (("annotations", 0, "category_id"), 5, ("bbox",), "category_id 5 is not among the categories [1, 2]"),
    (("annotations", 0, "bbox"), [0, 0, 10], ("bbox",), "bbox must be 4 finite numbers"),
    (("annotations", 0, "bbox"), [0, 0, "10", 10], ("bbox",), "bbox must be 4 finite numbers"),
    (("annotations", 0, "bbox"), [0, 0, float("nan"), 10], ("bbox",), "bbox must be 4 finite numbers"),
    (("annotations", 0, "bbox"), [0, 0, -1, 10], ("bbox",), "bbox width and height must be >= 0"),
    (("annotations", 0, "bbox"), None, ("bbox",), "bbox must be 4 finite numbers"),
    (("annotations", 1, "iscrowd"), 2, ("bbox",), "annotation #1 (id 2): iscrowd must be 0 or 1, got 2"),
    (("annotations", 1, "iscrowd"), "0", ("bbox",), "iscrowd must be 0 or 1, got \"0\""),
    (("annotations", 0, "area"), None, ("bbox",), "area must be a finite number >= 0"),
    (("annotations", 0, "area"), -5, ("bbox",), "area must be a finite number >= 0"),
    (("annotations", 0, "area"), "100", ("bbox",), "area must be a finite number >= 0"),
    (("annotations", 0, "segmentation"), [[0, 0, 10, 10]], ("segm",), "polygon 0 must be >= 3 points"),
    (("annotations", 0, "segmentation"), [[0, 0, 10, 0, 10]], ("segm",), "polygon 0 must be >= 3 points"),
    (("annotations", 0, "segmentation"), [], ("segm",), "segmentation must be a list of polygons or an RLE"),
    (("annotations", 0, "segmentation"), None, ("segm",), "has no 'segmentation'"),
    (("annotations", 0, "segmentation"), {"size": [32, 32]}, ("segm",), "RLE needs 'size' and 'counts'"),
    (("annotations", 0, "segmentation"), {"size": [16, 32], "counts": "0`0"}, ("segm",),
     "segmentation size [16, 32] is not the image's [height, width] [32, 32]"),
    (("images", 0, "height"), None, ("segm",), "has no 'height' (segm evaluation needs the image size)"),
    (("images", 0, "width"), 0, ("bbox",), "width must be a positive int"),
    (("annotations", 1, "id"), 1, ("bbox",), "annotation #1 (id 1): id 1 repeats an earlier annotation's"),
    (("categories",), {"1": "a"}, ("bbox",), "'categories' must be a list"),
    (("annotations", 0), [1, 2], ("bbox",), "annotation #0: is a list, not a mapping"),
]


@pytest.mark.parametrize("path, value, iou_types, message", GT_CASES,
                         ids=[f"{'.'.join(map(str, c[0]))}={c[1]!r}" for c in GT_CASES])
def test_bad_ground_truth_is_one_line_naming_file_and_record(tmp_path, capsys, path, value, iou_types, message):
    code, err = _run(tmp_path, capsys, _with(path, value), [DET], iou_types)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {tmp_path / 'gt.json'}: ") and message in err[0], err[0]
    assert "correct or remove that record" in err[0] or "COCO instances json" in err[0]


def _det(**changes):
    det = dict(DET, **{k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        del det[key]
    return det


DT_CASES = [  # (detection changes, iou types, message)
    ({"image_id": "1"}, ("bbox",), "image_id must be an int, got \"1\""),
    ({"image_id": 1.0}, ("bbox",), "image_id must be an int, got 1.0"),
    ({"image_id": 4}, ("bbox",), "image_id 4 is not in the ground truth (1 images)"),
    ({"category_id": 9}, ("bbox",), "category_id 9 is not in the ground truth categories [1, 2]"),
    ({"category_id": "1"}, ("bbox",), "category_id must be an int"),
    ({"score": "0.9"}, ("bbox",), "score must be a finite number, got \"0.9\""),
    ({"score": float("nan")}, ("bbox",), "score must be a finite number"),
    ({"score": None}, ("bbox",), "has no 'score'"),
    ({"bbox": [0, 0, 10]}, ("bbox",), "bbox must be 4 finite numbers"),
    ({"bbox": [0, 0, float("inf"), 10]}, ("bbox",), "bbox must be 4 finite numbers"),
    ({"bbox": [0, 0, 10, -2]}, ("bbox",), "bbox width and height must be >= 0"),
    ({"bbox": None, "segmentation": None}, ("bbox",), "has no 'bbox' (or 'segmentation')"),
    ({"segmentation": None}, ("segm",), "has no 'segmentation'"),
    ({"segmentation": POLY}, ("segm",), "segmentation must be an RLE dict"),
    ({"segmentation": {"counts": "0`0"}}, ("segm",), "RLE needs 'size' and 'counts'"),
    ({"segmentation": {"size": [32, 32], "counts": 5}}, ("segm",), "counts must be an RLE string or a list of ints"),
    ({"segmentation": {"size": [30, 32], "counts": "0`0"}}, ("bbox",), "segmentation size [30, 32] is not the image's"),
]


@pytest.mark.parametrize("changes, iou_types, message", DT_CASES, ids=[repr(c[0]) for c in DT_CASES])
def test_bad_detection_is_one_line_naming_file_and_record(tmp_path, capsys, changes, iou_types, message):
    dets = [DET, _det(**changes)]
    code, err = _run(tmp_path, capsys, GT, dets, iou_types)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {tmp_path / 'dt.json'}: detection #1: ") and message in err[0], err[0]
    assert err[0].endswith("correct or remove that detection")


def test_not_a_mapping_and_empty(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, GT, [DET, 3])
    assert code == 2 and "detection #1: is a int, not a mapping" in err[0]
    code, err = _run(tmp_path, capsys, GT, [])
    assert code == 2 and "dt.json: detections are empty" in err[0]


def test_good_inputs_pass_and_box_only_sets_may_carry_empty_segmentations():
    check_ground_truth(GT, iou_types=("bbox", "segm"))
    check_detections(GT, [DET, dict(DET, segmentation={"size": [32, 32], "counts": [0, 1024]})], ("bbox", "segm"))
    box_only = _with(("annotations", 0, "segmentation"), [])
    check_ground_truth(box_only, iou_types=("bbox",))  # segmentation unused by bbox evaluation
    with pytest.raises(CocoEvalError, match="ground truth: annotation #0"):
        check_ground_truth(box_only, iou_types=("segm",))


@pytest.mark.parametrize("path, value, message", [
    (("annotations", 0, "image_id"), "1", "annotation #0 (id 1): image_id must be an int"),
    (("annotations", 0, "iscrowd"), 2, "annotation #0 (id 1): iscrowd must be 0 or 1"),
    (("annotations", 0, "bbox"), ["0", 0, 5, 5], "annotation #0 (id 1): bbox must be a list of 4 numbers"),
    (("images", 0, "id"), 1.5, "image #0 (id 1.5): id must be an int"),
])
def test_training_reader_refuses_wrong_types(tmp_path, path, value, message):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "ann.json").write_text(json.dumps(_with(path, value)))
    with pytest.raises(DataError, match="ann.json: " + message.replace("(", r"\(").replace(")", r"\)")):
        CocoDetection(tmp_path / "ann.json", images)
    # values stay the reader's to repair: a negative box and an unknown category are dropped and counted
    bad_values = _with(("annotations", 0, "bbox"), [0, 0, -3, 5])
    bad_values["annotations"][1]["category_id"] = 7
    (tmp_path / "ann.json").write_text(json.dumps(bad_values))
    ds = CocoDetection(tmp_path / "ann.json", images)
    assert ds.dropped["non_positive_size"] == 1 and ds.dropped["unknown_category"] == 1
