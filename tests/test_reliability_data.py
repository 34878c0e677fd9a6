"""Bad data for the COCO detection dataset and the classification folder reader, beyond what
tests/test_det_data_coco.py (bad boxes, missing / garbage image) and tests/test_folders_dataset.py (gray / RGBA /
palette / 16-bit PNGs, corrupt files in folders and tars) already cover:
  COCO: grayscale / RGBA / 16-bit PNG images decode to RGB uint8 with the right values; a truncated JPEG names the
  file; EXIF orientation is applied (as OpenCV and detectron2 do) and checked against the json's width/height (a
  json made on the unrotated pixels is refused with the reason); empty / degenerate polygons, unknown category ids
  are dropped and counted, never given another label; duplicate annotation or image ids and empty datasets are
  refused naming the file; tools/train_det.py prints the dropped counts and refuses an empty set in one line, and
  refuses (before training) a val ground truth whose annotation names an unknown category.
  Folders: EXIF orientation applied; truncated JPEG named through the dataset.
"""
import importlib.util
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, require_shared
from resbackbones.data.coco import CocoDetection
from resbackbones.data.errors import DataError
from resbackbones.data.folders import ImageFolderDataset


def _coco(tmp_path, images, annotations=(), categories=({"id": 1, "name": "a"}, {"id": 3, "name": "b"})):
    """Write a COCO json for `images` [(file_name, width, height)] with default-id annotations."""
    data = {"images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
            "annotations": [dict({"id": i + 1, "iscrowd": 0, "area": 100.0}, **a) for i, a in enumerate(annotations)],
            "categories": list(categories)}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _square(image_id, category_id, x=2, y=2, side=10, **extra):
    poly = [x, y, x + side, y, x + side, y + side, x, y + side]
    return dict({"image_id": image_id, "category_id": category_id, "bbox": [x, y, side, side],
                 "segmentation": [poly]}, **extra)


def test_png_variants_decode_to_rgb_uint8(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    cv2.imwrite(str(images / "gray.png"), gray)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 50  # red (OpenCV stores BGRA), mostly transparent
    cv2.imwrite(str(images / "rgba.png"), rgba)
    deep = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    cv2.imwrite(str(images / "deep.png"), np.stack([deep] * 3, -1))
    ann = _coco(tmp_path, [("gray.png", 30, 20), ("rgba.png", 30, 20), ("deep.png", 30, 20)],
                [_square(1, 1), _square(2, 3), _square(3, 1)])
    ds = CocoDetection(ann, images)
    decoded = [ds[i][0] for i in range(3)]
    assert all(im.shape == (20, 30, 3) and im.dtype == np.uint8 for im in decoded)
    assert np.array_equal(decoded[0][..., 0], gray) and np.array_equal(decoded[0][..., 2], gray)
    assert (decoded[1][..., 0] == 200).all() and (decoded[1][..., 1:] == 0).all()  # RGB order, alpha dropped
    assert np.array_equal(decoded[2][..., 1], np.round(deep / 257).astype(np.uint8))  # 16-bit scaled, not cut
    assert [list(ds[i][1]["labels"]) for i in range(3)] == [[1], [2], [1]]  # category 3 -> contiguous label 2


def test_truncated_jpeg_names_the_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ok, data = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    (images / "cut.jpg").write_bytes(data.tobytes()[: len(data) // 2])
    ds = CocoDetection(_coco(tmp_path, [("cut.jpg", 64, 48)], [_square(1, 1)]), images)
    with pytest.raises(DataError, match="cut.jpg"):
        ds[0]


def _exif_jpeg(path, *, orientation):
    """A 40x60 (H x W) image, left half white, with an EXIF orientation tag (6: display rotated 90 degrees CW)."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_and_checked_against_the_json(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _exif_jpeg(images / "rot.jpg", orientation=6)
    # json made on the displayed (rotated) image: 40 wide, 60 high -> loads, rotated like detectron2 does
    ds = CocoDetection(_coco(tmp_path, [("rot.jpg", 40, 60)], [_square(1, 1)]), images)
    image, _ = ds[0]
    assert image.shape == (60, 40, 3)
    assert image[:25].mean() > 200 and image[35:].mean() < 50  # the white left half is now on top
    # json made on the stored pixels (PIL size without exif_transpose): refused, with the reason
    ds = CocoDetection(_coco(tmp_path, [("rot.jpg", 60, 40)], [_square(1, 1)]), images)
    with pytest.raises(DataError, match=r"rot\.jpg is 40x60 but ann\.json says 60x40 \(.*EXIF orientation"):
        ds[0]


def test_folder_reader_applies_exif_orientation(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    _exif_jpeg(tmp_path / "train" / "cat" / "rot.jpg", orientation=6)
    image = ImageFolderDataset(tmp_path / "train").load_image(0)
    assert image.shape == (60, 40, 3) and image[:25].mean() > 200


def test_unknown_category_and_degenerate_polygons_are_dropped_and_counted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((32, 32, 3), np.uint8))
    anns = [_square(1, 1), _square(1, 7), _square(1, 3, segmentation=[]), _square(1, 3, segmentation=[[]]),
            _square(1, 3, segmentation=[[1, 1, 5, 5]]), _square(1, 3, segmentation=[[1, 1, 5, 5], [2, 2, 9, 2, 9, 9]])]
    ds = CocoDetection(_coco(tmp_path, [("a.png", 32, 32)], anns), images)
    assert ds.dropped["unknown_category"] == 1 and ds.dropped["no_segmentation"] == 3
    _, target = ds[0]
    # the unknown category (7) is not mapped onto some other label; the polygon with one good part is kept
    assert list(target["labels"]) == [1, 2] and target["masks"].shape == (2, 32, 32)
    assert target["masks"][1].sum() > 0
    assert "unknown_category: 1" in ds.describe() and "no_segmentation: 3" in ds.describe()


@pytest.mark.parametrize("kind", ["annotation", "image"])
def test_duplicate_ids_are_refused(kind, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ann = _coco(tmp_path, [("a.png", 32, 32), ("b.png", 32, 32)], [_square(1, 1), _square(2, 1)])
    data = json.loads(ann.read_text())
    data[kind + "s"][1]["id"] = data[kind + "s"][0]["id"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"ann\.json: duplicate {kind} id\(s\) \[1\]"):
        CocoDetection(ann, images)


def test_empty_datasets_are_refused_naming_the_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(DataError, match=r"ann\.json has no images"):
        CocoDetection(_coco(tmp_path, []), images)
    only_bad = _coco(tmp_path, [("a.png", 32, 32)], [_square(1, 1, bbox=[40, 40, 5, 5])])
    with pytest.raises(DataError, match=r"ann\.json has no image with a usable annotation.*outside_image"):
        CocoDetection(only_bad, images, filter_empty=True)
    assert len(CocoDetection(only_bad, images)) == 1  # kept as a background-only image without filter_empty


def _train_det():
    spec = importlib.util.spec_from_file_location("reliability_data_train_det", REPO / "tools" / "train_det.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_det_reports_dropped_items_and_refuses_an_empty_set(tmp_path, capsys):
    sample = require_shared("data/coco_sample")
    data = json.loads((sample / "annotations.json").read_text())
    first = data["images"][0]
    data["images"] = [first]
    anns = [a for a in data["annotations"] if a["image_id"] == first["id"]][:2]
    (tmp_path / "val.json").write_text(json.dumps(dict(data, annotations=anns)))  # evaluation GT: checked strictly
    data["annotations"] = anns + [dict(anns[0], id=10 ** 9, category_id=99999),
                                  dict(anns[0], id=10 ** 9 + 1, bbox=[5, 5, 0, 3])]
    (tmp_path / "ann.json").write_text(json.dumps(data))
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample / "images" / first["file_name"], images)
    tool = _train_det()
    common = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(tmp_path / "out"),
              "--device", "cpu", "data.train.kind=coco", f"data.train.image_root={images}",
              f"data.train.ann_file={tmp_path / 'ann.json'}", "model.num_classes=80", "solver.batch_size=1",
              "solver.max_iter=1", "solver.warmup=0", "solver.steps=[]", "train.progress=false",
              "test.max_images=1", "data.val.kind=coco", f"data.val.image_root={images}",
              f"data.val.ann_file={tmp_path / 'val.json'}"]
    code = tool.main(common)
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-2000:]
    assert "unknown_category: 1" in out and "non_positive_size: 1" in out, out[-2000:]
    # the same json as the evaluation ground truth: refused before training (COCOeval would ignore that object)
    code = tool.main(common + [f"data.val.ann_file={tmp_path / 'ann.json'}", "--output", str(tmp_path / "o1")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "ann.json: annotation #2 (id 1000000000): category_id 99999" in err[0], err
    data["images"] = []
    (tmp_path / "empty.json").write_text(json.dumps(data))
    code = tool.main(common + [f"data.train.ann_file={tmp_path / 'empty.json'}", "--output", str(tmp_path / "o2")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "empty.json has no images" in err[0], err
