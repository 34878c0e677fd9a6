"""Issue 21, item 4 (inputs): the one COCO-load path (data/coco_format.read_coco_json + check_ground_truth,
used by evaluation/coco.py and data/coco.py) names the file in every error, and the examples of the issue run as
written through the real tools:
  - a ground truth / training json that is not UTF-8: one line naming the file (and the byte);
  - image / annotation / category ids >= 2**63: handled exactly as pycocotools handles them (the fast evaluator
    ranks ids instead of putting them in int64 arrays; its 12 stats and precision arrays equal pycocotools'),
    train_det trains and evaluates on them; faster_coco_eval, which holds ids as doubles, refuses them in one line;
  - a training image without width / height: the size is read from the file (detectron2 does the same); a file that
    cannot be read then is one line naming the file and the image id;
  - NaN / inf boxes, negative sizes, wrong-typed fields, bad RLE: one line naming the file, the annotation id and
    the field (validation ground truth and evaluation); a training set drops bad box values and counts them, and
    refuses what pycocotools would decode into garbage (an RLE whose runs do not cover the image, NaN polygons).
Every tool case: exit 2, exactly one stderr line "error: ...", no traceback.
"""
import copy
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import REPO
from fuzz_support import one_error_line
from resbackbones.data.coco import CocoDetection
from resbackbones.data.errors import DataError
from resbackbones.evaluation.coco import _run, evaluate_coco
from resbackbones.data.coco_format import CocoEvalError, read_coco_json, rle_counts

HUGE = 2**63  # int64 ends at 2**63 - 1; JSON ints do not end
TOOLS = REPO / "tools"




def _tool(name, *args, timeout=600):
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def coco_set(root, *, base=1, n_images=4, size=64):
    """root/images/<i>.png and a COCO dict of boxes + polygons; ids start at `base` (images), base + 100
    (annotations), base + 1000 (categories)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n_images):
        cv2.imwrite(str(root / "images" / f"{i}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        images.append({"id": base + i, "file_name": f"{i}.png", "width": size, "height": size})
        for k in range(2):
            x, side = 4 + 20 * k + i, 12 + 2 * k
            annotations.append({"id": base + 100 + 2 * i + k, "image_id": base + i, "category_id": base + 1000 + k,
                                "bbox": [x, 6, side, side], "area": float(side * side), "iscrowd": 0,
                                "segmentation": _square(x, 6, side)})
    categories = [{"id": base + 1000 + k, "name": name} for k, name in enumerate(("a", "b"))]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


# -- the reader ---------------------------------------------------------------------------------------------------
def test_read_coco_json_names_the_file(tmp_path):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"categories": [{"id": 1, "name": "café"}]}'.encode("latin-1"))
    with pytest.raises(CocoEvalError, match=r"latin1\.json is not UTF-8 text \(byte 0xe9 at offset 38\)"):
        read_coco_json(latin1, "ground-truth")
    with pytest.raises(DataError, match="COCO annotation file .*latin1.json is not UTF-8"):
        read_coco_json(latin1, "COCO annotation", error=DataError)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"images": []}')
    assert read_coco_json(bom, "ground-truth") == {"images": []}
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CocoEvalError, match="deep.json is nested too deeply"):
        read_coco_json(deep, "ground-truth")
    with pytest.raises(CocoEvalError, match="ground-truth file not found: .*nope.json"):
        read_coco_json(tmp_path / "nope.json", "ground-truth")


def test_eval_coco_non_utf8_ground_truth_is_one_line(tmp_path):
    gt = coco_set(tmp_path)
    gt["categories"][0]["name"] = "café"
    path = tmp_path / "gt.json"
    path.write_bytes(json.dumps(gt, ensure_ascii=False).encode("latin-1"))
    dt = _write(tmp_path / "dt.json", [{"image_id": 1, "category_id": 1001, "bbox": [4, 6, 12, 12], "score": 0.9}])
    line = one_error_line(_tool("eval_coco.py", "--gt", path, "--dt", dt, "--out", tmp_path / "s.json"))
    assert f"ground-truth file {path} is not UTF-8" in line, line
    assert not (tmp_path / "s.json").exists()


# -- huge ids -----------------------------------------------------------------------------------------------------
def _detections(gt, seed=0):
    """Perturbed boxes (some shifted past IoU 0.5, one missed, one false positive per image) with masks."""
    rng = np.random.default_rng(seed)
    out = []
    for k, ann in enumerate(gt["annotations"]):
        if k == 3:
            continue
        x, y, w, h = ann["bbox"]
        dx = float(rng.uniform(-1, 1) * (6 if k % 3 == 0 else 1.5))
        box = [x + dx, y + float(rng.uniform(-1, 1)), w, h]
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                    "score": float(rng.uniform(0.3, 1))})
    for image in gt["images"]:
        out.append({"image_id": image["id"], "category_id": gt["categories"][1]["id"], "bbox": [40, 40, 10, 10],
                    "score": float(rng.uniform(0.3, 1))})
    for det in out:
        mask = np.zeros((64, 64), np.uint8, order="F")
        x, y, w, h = (int(round(v)) for v in det["bbox"])
        mask[max(y, 0): y + h, max(x, 0): x + w] = 1
        rle = mask_util.encode(mask)
        det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    return out


def _both(gt, dets, iou_type):
    typed = [{k: v for k, v in d.items() if not (iou_type == "segm" and k == "bbox")} for d in dets]
    return _run(gt, copy.deepcopy(typed), iou_type, "fast"), _run(gt, copy.deepcopy(typed), iou_type, "pycocotools")


def _assert_same(fast, reference):
    assert list(fast.stats) == list(reference.stats)  # the 12 numbers, bit for bit
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(fast.eval[key], reference.eval[key]), key


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("base", [HUGE, 2**64 + 5], ids=["uint64", "beyond_uint64"])
def test_fast_equals_pycocotools_with_ids_beyond_int64(tmp_path, iou_type, base):
    gt = coco_set(tmp_path, base=base)
    gt["annotations"][0]["id"] = 0  # pycocotools counts a match to a gt of id 0 as unmatched: so does fast
    gt["annotations"][5]["iscrowd"] = 1
    fast, reference = _both(gt, _detections(gt), iou_type)
    assert 0 < reference.stats[0] < 1
    _assert_same(fast, reference)
    by_api = evaluate_coco(gt, _detections(gt), iou_types=(iou_type,))[iou_type]
    assert list(by_api.per_category) == [base + 1000, base + 1001] and by_api.stats["AP"] == reference.stats[0]


def _renumbered(gt, dets):
    """The same set with image / category ids replaced by 1, 2, ... in the same order (annotation ids kept)."""
    images = {v: k + 1 for k, v in enumerate(sorted(i["id"] for i in gt["images"]))}
    cats = {v: k + 1 for k, v in enumerate(sorted(c["id"] for c in gt["categories"]))}
    gt, dets = copy.deepcopy(gt), copy.deepcopy(dets)
    for record in gt["images"]:
        record["id"] = images[record["id"]]
    for record in gt["categories"]:
        record["id"] = cats[record["id"]]
    for record in gt["annotations"] + dets:
        record["image_id"], record["category_id"] = images[record["image_id"]], cats[record["category_id"]]
    return gt, dets


def test_ids_on_both_sides_of_2_63(tmp_path):
    """numpy makes float64 of [7, 2**63, 2**63 + 2, ...], where 2**63 + 2 and 2**63 merge: pycocotools would drop
    images without a word, so it is refused for that backend naming the id; fast ranks the ids and gives exactly
    what pycocotools gives for the same set with the ids renumbered in the same order."""
    gt = coco_set(tmp_path, base=HUGE)
    gt["images"][0]["id"] = 7
    for record in gt["annotations"]:
        record["image_id"] = 7 if record["image_id"] == HUGE else record["image_id"]
    dets = _detections(gt)
    small, small_dets = _renumbered(gt, dets)
    assert sorted(i["id"] for i in small["images"]) == [1, 2, 3, 4]
    fast_small, reference_small = _both(small, small_dets, "bbox")
    _assert_same(fast_small, reference_small)
    fast_mixed, _ = _both(gt, dets, "bbox")
    _assert_same(fast_mixed, reference_small)
    with pytest.raises(CocoEvalError, match=rf"mixed.json: image id {HUGE + 1} would become 9.2233720368547758e\+18 "
                                            r"inside pycocotools"):
        evaluate_coco(gt, dets, backend="pycocotools", gt_source="mixed.json")


def test_eval_coco_with_ids_beyond_int64(tmp_path):
    gt = coco_set(tmp_path, base=HUGE)
    gt_path, dt_path = _write(tmp_path / "gt.json", gt), _write(tmp_path / "dt.json", _detections(gt))
    proc = _tool("eval_coco.py", "--gt", gt_path, "--dt", dt_path, "--iou-type", "bbox", "segm", "--out",
                 tmp_path / "s.json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert 0 < stats["bbox"]["AP"] < 1 and stats["per_category"]["bbox"]["a"]["id"] == HUGE + 1000
    line = one_error_line(_tool("eval_coco.py", "--gt", gt_path, "--dt", dt_path, "--backend", "faster_coco_eval"))
    assert f"{gt_path}: image #0: id {HUGE} is beyond 2**53" in line, line


def _det_args(tmp_path, train, val=None, *extra):
    val = val or train
    return ["--config", REPO / "configs" / "quickstart.yaml", "--output", tmp_path / "out", "--device", "cpu",
            "data.train.kind=coco", f"data.train.ann_file={train}", f"data.train.image_root={tmp_path / 'images'}",
            "data.val.kind=coco", f"data.val.ann_file={val}", f"data.val.image_root={tmp_path / 'images'}",
            "data.cache_images=false", "solver.batch_size=2", "solver.max_iter=1", "train.progress=false",
            "train.log_period=1", *extra]


def test_train_det_trains_and_evaluates_with_ids_beyond_int64(tmp_path):
    path = _write(tmp_path / "gt.json", coco_set(tmp_path, base=HUGE))
    proc = _tool("train_det.py", *_det_args(tmp_path, path, None, "model.num_classes=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert "bbox" in json.dumps(report) and (tmp_path / "out" / "checkpoints" / "last.pt").is_file()


# -- width / height -----------------------------------------------------------------------------------------------
def test_training_image_without_size_takes_it_from_the_file(tmp_path):
    gt = coco_set(tmp_path)
    del gt["images"][1]["width"], gt["images"][2]["height"]
    dataset = CocoDetection(_write(tmp_path / "gt.json", gt), tmp_path / "images")
    assert dataset.num_sizes_read == 2
    assert dataset.coco.imgs[2]["width"] == 64 and dataset.coco.dataset["images"][2]["height"] == 64
    image, target = dataset[1]
    assert image.shape == (64, 64, 3) and target["orig_size"] == (64, 64) and target["masks"].shape == (2, 64, 64)


def test_training_image_without_size_and_a_wrong_width(tmp_path):
    gt = coco_set(tmp_path)
    del gt["images"][1]["height"]
    gt["images"][1]["width"] = 65
    with pytest.raises(DataError, match=r"images/1.png is 64x64 but .*gt.json says width 65 \(image id 2\)"):
        CocoDetection(_write(tmp_path / "gt.json", gt), tmp_path / "images")


def test_train_det_image_without_size_and_without_file_is_one_line(tmp_path):
    gt = coco_set(tmp_path)
    del gt["images"][2]["width"]
    gt["images"][2]["file_name"] = "gone.png"
    path = _write(tmp_path / "gt.json", gt)
    line = one_error_line(_tool("train_det.py", *_det_args(tmp_path, path, None, "model.num_classes=2")))
    assert f"image id 3 in {path} has no width / height" in line and "gone.png" in line, line


# -- bad values and types -------------------------------------------------------------------------------------------
BAD_VAL = [
    ("nan_box", lambda a: a.update(bbox=[4, 6, float("nan"), 12]), "bbox must be 4 finite numbers"),
    ("inf_box", lambda a: a.update(bbox=[4, 6, 12, float("inf")]), "bbox must be 4 finite numbers"),
    ("negative_size", lambda a: a.update(bbox=[4, 6, -12, 12]), "bbox width and height must be >= 0"),
    ("string_image_id", lambda a: a.update(image_id="1"), "image_id must be an int"),
    ("string_area", lambda a: a.update(area="big"), "area must be"),
    ("rle_without_counts", lambda a: a.update(segmentation={"size": [64, 64]}), "RLE needs 'size' and 'counts'"),
]


@pytest.mark.parametrize("case, corrupt, words", BAD_VAL, ids=[c[0] for c in BAD_VAL])
def test_eval_coco_bad_ground_truth_record_is_one_line(tmp_path, case, corrupt, words):
    gt = coco_set(tmp_path)
    corrupt(gt["annotations"][3])
    path = _write(tmp_path / "gt.json", gt)
    dt = _write(tmp_path / "dt.json", _detections(coco_set(tmp_path)))
    proc = _tool("eval_coco.py", "--gt", path, "--dt", dt, "--iou-type", "bbox", "segm")
    line = one_error_line(proc)
    assert f"{path}: annotation #3 (id 104)" in line and words in line, line


@pytest.mark.parametrize("case, corrupt, words", BAD_VAL[:4], ids=[c[0] for c in BAD_VAL[:4]])
def test_train_det_bad_validation_record_is_one_line(tmp_path, case, corrupt, words):
    good = _write(tmp_path / "train.json", coco_set(tmp_path))
    gt = coco_set(tmp_path)
    corrupt(gt["annotations"][3])
    val = _write(tmp_path / "val.json", gt)
    line = one_error_line(_tool("train_det.py", *_det_args(tmp_path, good, val, "model.num_classes=2")))
    assert f"{val}: annotation #3 (id 104)" in line and words in line, line
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_training_set_drops_and_counts_bad_box_values(tmp_path):
    gt = coco_set(tmp_path)
    gt["annotations"][0]["bbox"] = [4, 6, float("nan"), 12]
    gt["annotations"][1]["bbox"] = [4, 6, -3, 12]
    dataset = CocoDetection(_write(tmp_path / "gt.json", gt), tmp_path / "images")
    assert dataset.dropped == {"malformed_box": 1, "non_positive_size": 1}
    assert "malformed_box: 1" in dataset.describe()


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


BAD_SEGM = [
    ("runs_short", lambda: {"size": [64, 64], "counts": [10, 20]}, "adding up to height * width = 4096"),
    ("runs_past_the_mask", lambda: {"size": [64, 64], "counts": [4000, 200]}, "adding up to height * width"),
    ("negative_run", lambda: {"size": [64, 64], "counts": [5000, -904]}, "runs >= 0"),
    ("not_an_rle_string", lambda: {"size": [64, 64], "counts": "~~~"}, "is not a pycocotools RLE string"),
    ("other_size", lambda: _rle(np.ones((32, 64))), "segmentation size [32, 64] is not the image's [height, width]"),
    ("nan_polygon", lambda: [[4, 6, float("nan"), 6, 16, 18, 4, 18]], "segmentation polygon 0 must be finite"),
]


@pytest.mark.parametrize("case, segm, words", BAD_SEGM, ids=[c[0] for c in BAD_SEGM])
def test_training_segmentation_pycocotools_cannot_decode_names_the_annotation(tmp_path, case, segm, words):
    gt = coco_set(tmp_path)
    gt["annotations"][3]["segmentation"] = segm()
    with pytest.raises(DataError) as caught:
        CocoDetection(_write(tmp_path / "gt.json", gt), tmp_path / "images")
    message = str(caught.value)
    assert f"{tmp_path / 'gt.json'}: annotation id 104 (image id 2)" in message and words in message, message
    CocoDetection(tmp_path / "gt.json", tmp_path / "images", with_masks=False)  # box-only training ignores it


def test_train_det_bad_rle_is_one_line(tmp_path):
    gt = coco_set(tmp_path)
    gt["annotations"][3]["segmentation"] = {"size": [64, 64], "counts": [4000, 200]}
    path = _write(tmp_path / "gt.json", gt)
    line = one_error_line(_tool("train_det.py", *_det_args(tmp_path, path, None, "model.num_classes=2")))
    assert f"{path}: annotation id 104 (image id 2): segmentation counts" in line, line


def test_train_det_training_record_of_the_wrong_type_is_one_line(tmp_path):
    gt = coco_set(tmp_path)
    del gt["images"][1]["file_name"]
    path = _write(tmp_path / "gt.json", gt)
    line = one_error_line(_tool("train_det.py", *_det_args(tmp_path, path, None, "model.num_classes=2")))
    assert f"{path}: image #1 (id 2): file_name must be" in line, line


def test_valid_rles_decode_to_their_masks():
    """rle_counts reads pycocotools' compressed strings exactly (maskApi.c rleFrString): runs rebuilt from them
    give back the encoded mask, so the check above never refuses a good RLE."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        if trial % 5 == 0:
            mask[:] = trial % 2
        rle = _rle(mask)
        runs = rle_counts(rle["counts"])
        assert sum(runs) == height * width
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
        assert np.array_equal(flat.reshape(width, height).T, mask)
