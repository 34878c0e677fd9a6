"""The embedded shapes instance set: a fair task (sizes, counts, classes, occlusion, noise), exact COCO masks/boxes,
deterministic from the seed, fresh val images."""
import json

import numpy as np
from pycocotools import mask as mask_utils

from resbackbones.data.shapes import CATEGORIES, shapes_coco_dict, write_shapes_coco


def _by_image(coco):
    grouped = {}
    for ann in coco["annotations"]:
        grouped.setdefault(ann["image_id"], []).append(ann)
    return grouped


def test_shapes_is_a_fair_task():
    coco, pixels = shapes_coco_dict(num_images=40, seed=5, image_size=192)
    assert len(coco["images"]) == len(pixels) == 40
    assert [c["name"] for c in coco["categories"]] == ["circle", "rectangle", "triangle"]
    grouped = _by_image(coco)
    counts = [len(grouped.get(im["id"], [])) for im in coco["images"]]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in CATEGORIES}
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]]
    assert min(sides) < 40 < 60 < max(sides)  # small and large objects
    for im, img in zip(coco["images"], pixels):
        assert img.shape == (192, 192, 3) and img.dtype == np.uint8
        assert im["width"] == im["height"] == 192
        # noisy background: neighbouring pixels differ (not a flat fill)
        assert np.abs(np.diff(img[:, :, 0].astype(int), axis=1)).mean() > 2
        masks = [mask_utils.decode(a["segmentation"]) for a in grouped[im["id"]]]
        # visible masks never overlap: later shapes hide what is under them
        assert np.stack(masks).sum(0).max() <= 1
        for ann, m in zip(grouped[im["id"]], masks):
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)]
            assert ann["area"] == float(m.sum()) and ann["iscrowd"] == 0
    colours = {tuple(img[int(a["bbox"][1] + a["bbox"][3] / 2), int(a["bbox"][0] + a["bbox"][2] / 2)] // 32)
               for a, img in ((a, pixels[a["image_id"] - 1]) for a in coco["annotations"])}
    assert len(colours) > 20  # random colours


def test_shapes_has_occlusion():
    """Later shapes hide parts of earlier ones: some visible masks are smaller than the drawn shape, and boxes
    of different instances overlap."""
    from resbackbones.data.shapes import render_image

    rng = np.random.default_rng(0)
    partly_hidden = 0
    for _ in range(40):
        _, instances = render_image(rng, 192)
        partly_hidden += sum(inst["mask"].sum() < inst["full_area"] for inst in instances)
        for inst in instances:
            assert inst["mask"].sum() >= 0.35 * inst["full_area"]  # nearly invisible instances are not labelled
    assert partly_hidden >= 5
    coco, _ = shapes_coco_dict(num_images=60, seed=11, image_size=192)
    overlaps = 0
    for anns in _by_image(coco).values():
        for i in range(len(anns)):
            for j in range(i + 1, len(anns)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = anns[i]["bbox"], anns[j]["bbox"]
                if min(x1 + w1, x2 + w2) - max(x1, x2) > 4 and min(y1 + h1, y2 + h2) - max(y1, y2) > 4:
                    overlaps += 1
    assert overlaps >= 5


def test_shapes_deterministic_and_val_is_fresh(tmp_path):
    a = write_shapes_coco(tmp_path / "a", num_images=6, seed=1)
    b = write_shapes_coco(tmp_path / "b", num_images=6, seed=1)
    v = write_shapes_coco(tmp_path / "v", num_images=6, seed=2)
    ja, jb, jv = (json.loads((r / "annotations.json").read_text()) for r in (a, b, v))
    assert ja == jb
    for name in sorted(p.name for p in (a / "images").iterdir()):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "images" / name).read_bytes() != (v / "images" / name).read_bytes()
    assert ja["annotations"] != jv["annotations"]
    # A second call with the same arguments reuses the folder; other arguments regenerate it.
    stamp = (a / "annotations.json").stat().st_mtime_ns
    write_shapes_coco(tmp_path / "a", num_images=6, seed=1)
    assert (a / "annotations.json").stat().st_mtime_ns == stamp
    write_shapes_coco(tmp_path / "a", num_images=7, seed=1)
    assert len(json.loads((a / "annotations.json").read_text())["images"]) == 7


def test_shapes_refuses_small_images():
    import pytest

    with pytest.raises(ValueError, match="192"):
        shapes_coco_dict(num_images=1, seed=0, image_size=128)
