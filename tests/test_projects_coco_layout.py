"""projects/coco_detection/check_coco_layout.py on fake COCO folders: a good one passes, each mistake is named."""
import json

import cv2
import numpy as np
import pytest

from conftest import REPO, load_project_module

check_coco_layout = load_project_module("coco_detection", "check_coco_layout")


def _fake_coco(root, *, n=3, size=(40, 30)):
    """annotations/instances_{train,val}2017.json + train2017/, val2017/ with n real JPEGs each."""
    width, height = size
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(1, n + 1):
            name = f"{i:012d}.jpg"
            cv2.imwrite(str(root / split / name), np.full((height, width, 3), 40 * i, np.uint8))
            images.append({"id": i, "file_name": name, "width": width, "height": height})
            annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
                                "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 15]]})
        data = {"images": images, "annotations": annotations,
                "categories": [{"id": k, "name": f"c{k}"} for k in range(1, 81)]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _check(root, capsys, *args):
    code = check_coco_layout.main([str(root), "--sample", "5", *args])
    return code, capsys.readouterr().out


def test_good_layout_passes(tmp_path, capsys):
    code, out = _check(_fake_coco(tmp_path / "coco"), capsys)
    assert code == 0, out
    assert "layout OK" in out and "all 3 images of the json are there" in out
    assert "3 sampled images decode" in out
    assert "full COCO 2017 train2017: 118,287 images" in out  # a subset is reported, not refused


@pytest.mark.parametrize("mistake, words", [
    ("no_annotations", ["instances_val2017.json not found", "annotations_trainval2017.zip"]),
    ("no_images", ["val2017/ not found", "val2017.zip"]),
    ("missing_file", ["1 of 3 images named in instances_val2017.json are not in", "000000000002.jpg"]),
    ("corrupt_image", ["sampled images", "000000000001.jpg does not decode"]),
    ("wrong_size", ["000000000001.jpg is 40x30, json says 41x30"]),
    ("bad_json", ["is not valid JSON"]),
    ("not_instances", ["lacks the list(s) ['annotations']"]),
    ("box_outside", ["boxes in instances_val2017.json lie outside their image"]),
])
def test_each_mistake_is_named(tmp_path, capsys, mistake, words):
    root = _fake_coco(tmp_path / "coco")
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    if mistake == "no_annotations":
        ann.unlink()
    elif mistake == "no_images":
        for path in (root / "val2017").iterdir():
            path.unlink()
        (root / "val2017").rmdir()
    elif mistake == "missing_file":
        (root / "val2017" / "000000000002.jpg").unlink()
    elif mistake == "corrupt_image":
        (root / "val2017" / "000000000001.jpg").write_bytes(b"not a jpeg")
    elif mistake == "wrong_size":
        data["images"][0]["width"] = 41
        ann.write_text(json.dumps(data))
    elif mistake == "bad_json":
        ann.write_text(ann.read_text()[:50])
    elif mistake == "not_instances":
        del data["annotations"]
        ann.write_text(json.dumps(data))
    elif mistake == "box_outside":
        data["annotations"][0]["bbox"] = [30, 3, 30, 12]
        ann.write_text(json.dumps(data))
    code, out = _check(root, capsys)
    assert code == 1, out
    for word in words:
        assert word in out, out
    assert "problem(s) found" in out


def test_not_a_folder(tmp_path, capsys):
    code, out = _check(tmp_path / "missing", capsys)
    assert code == 1 and "is not a folder" in out


def test_category_count_warning(tmp_path, capsys):
    root = _fake_coco(tmp_path / "coco")
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["categories"] = data["categories"][:3]
    ann.write_text(json.dumps(data))
    code, out = _check(root, capsys, "--splits", "train2017")
    assert code == 0 and "model.num_classes=80 - set it to 3" in out
