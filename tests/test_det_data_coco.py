"""CocoDetection on the real COCO sample (tests/fixtures/coco_sample): crowd regions, category mapping, images
without annotations, invalid boxes, missing files; plus box-only BCCD from ../shared."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES, require_shared
from resbackbones.data.coco import CocoDetection
from resbackbones.data.det_transforms import build_det_transforms
from resbackbones.data.errors import DataError

SAMPLE = FIXTURES / "coco_sample"
ANN, IMAGES = SAMPLE / "annotations.json", SAMPLE / "images"


@pytest.fixture(scope="module")
def sample():
    return CocoDetection(ANN, IMAGES)


def test_targets_and_crowd_ignored(sample):
    raw = json.loads(ANN.read_text())
    assert len(sample) == 6 and sample.num_classes == 80
    assert sample.dropped == {"crowd": 1}
    image, target = sample[sample.ids.index(464689)]
    assert image.shape == (640, 586, 3) and image.dtype == np.uint8
    non_crowd = [a for a in raw["annotations"] if a["image_id"] == 464689 and not a["iscrowd"]]
    assert len(target["boxes"]) == len(non_crowd) == 13
    assert target["masks"].shape == (13, 640, 586) and target["masks"].dtype == np.uint8
    # boxes are the json's xywh as xyxy; every mask lies inside (within a pixel of) its box
    x, y, w, h = non_crowd[0]["bbox"]
    np.testing.assert_allclose(target["boxes"][0], [x, y, x + w, y + h], rtol=0, atol=1e-4)
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1


def test_category_mapping_round_trip(sample):
    cat_ids = sorted(c["id"] for c in json.loads(ANN.read_text())["categories"])
    assert list(sample.label_to_category) == list(range(1, 81))
    assert sample.label_to_category[1] == 1 and sample.label_to_category[80] == 90
    assert all(sample.label_to_category[sample.category_to_label[c]] == c for c in cat_ids)
    _, target = sample[sample.ids.index(194216)]
    raw = [a["category_id"] for a in json.loads(ANN.read_text())["annotations"] if a["image_id"] == 194216]
    assert [sample.label_to_category[int(l)] for l in target["labels"]] == raw


def test_image_without_annotations(sample):
    image, target = sample[sample.ids.index(89)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 480, 640)
    filtered = CocoDetection(ANN, IMAGES, filter_empty=True)
    assert 89 not in filtered.ids and len(filtered) == 5 and filtered.num_filtered_empty == 1
    # through the transforms as well (tensors with the right empty shapes)
    tf = CocoDetection(ANN, IMAGES, transforms=build_det_transforms(train=True, flip_prob=1.0))
    image, target = tf[tf.ids.index(89)]
    assert image.shape == (3, 480, 640) and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 480, 640)


def _write(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_boxes_dropped_and_counted(tmp_path):
    data = json.loads(ANN.read_text())
    anns = [a for a in data["annotations"] if a["image_id"] == 194216]  # 640 x 294
    zero = dict(anns[0], id=9001, bbox=[10, 10, 0, 5])
    negative = dict(anns[0], id=9002, bbox=[10, 10, 5, -3])
    outside = dict(anns[0], id=9003, bbox=[700, 10, 20, 20])
    partly = dict(anns[0], id=9004, bbox=[630, 280, 40, 40])
    bad_polygon = dict(anns[0], id=9005, segmentation=[[1, 2, 3, 4]])
    data["annotations"] += [zero, negative, outside, partly, bad_polygon]
    ds = CocoDetection(_write(tmp_path, data), IMAGES)
    assert ds.dropped["non_positive_size"] == 2 and ds.dropped["outside_image"] == 1
    assert ds.dropped["no_segmentation"] == 1 and ds.dropped["clipped (kept)"] == 1 and ds.dropped["crowd"] == 1
    _, target = ds[ds.ids.index(194216)]
    assert len(target["boxes"]) == 4
    np.testing.assert_allclose(target["boxes"][-1], [630, 280, 640, 294])
    assert "dropped annotations" in ds.describe() and "outside_image: 1" in ds.describe()
    # box-only reading keeps the annotation whose polygon is degenerate
    assert CocoDetection(_write(tmp_path, data), IMAGES, with_masks=False).dropped.get("no_segmentation", 0) == 0


def test_missing_and_broken_images_name_the_file(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    (images / "000000343934.jpg").unlink()
    data = (images / "000000194216.jpg").read_bytes()
    (images / "000000194216.jpg").write_bytes(b"not a jpeg" + data[:50])
    ds = CocoDetection(ANN, images)
    with pytest.raises(DataError, match="000000343934.jpg"):
        ds[ds.ids.index(343934)]
    with pytest.raises(DataError, match="000000194216.jpg"):
        ds[ds.ids.index(194216)]
    with pytest.raises(DataError, match="nope.json"):
        CocoDetection(tmp_path / "nope.json", images)
    with pytest.raises(DataError, match="not_there"):
        CocoDetection(ANN, tmp_path / "not_there")


def test_bccd_box_only():
    root = require_shared("data/bccd")
    ds = CocoDetection(root / "val.json", root / "images", with_masks=False,
                       transforms=build_det_transforms(train=False))
    assert len(ds) == 72 and ds.num_classes == 3 and ds.label_to_category == {1: 1, 2: 2, 3: 3}
    image, target = ds[0]
    assert image.shape == (3, 480, 640) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert "masks" not in target and target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert len(target["boxes"]) > 0
