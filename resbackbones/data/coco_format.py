"""COCO ground truth and detections, type-checked before COCOeval sees them: the one place for both schemas.

In data/, not evaluation/: the COCO schema belongs to the dataset layer (detectron2 validates in
data/datasets/coco.py), and training (data/coco.py) reads through it as much as evaluation does.

    check_ground_truth(gt_dict, source="val.json", iou_types=("bbox", "segm"))
    check_detections(gt_dict, detections, ("bbox",), source="dets.json")

pycocotools takes every field at face value: a string image id never matches, iscrowd=2 counts as crowd, a polygon
of 7 numbers is cut to 3 points (5: an empty mask) without a word, one of 4 is taken for a box and fails with a
TypeError, a missing area raises a KeyError deep inside evaluate(). Here each record is checked first and the first
bad one raises CocoEvalError, one line naming the file, the record (its index and id) and the field, with the fix.
Pure Python: no pycocotools needed.

Ground truth: images / annotations / categories lists; ids ints (bools refused), unique; every annotation's
image_id and category_id known; bbox 4 finite numbers with w, h >= 0 (required for bbox evaluation); iscrowd 0 or
1 where present; area a finite number >= 0 (COCOeval sorts by it); for segm evaluation a segmentation in every
annotation, polygons of >= 3 points (>= 6 finite numbers, an even count) or RLE {"size": [h, w], "counts"}, and
every image's width / height (positive ints; checked where present for bbox too). Box-only sets may keep
"segmentation": [] when only bbox is evaluated.
Training data (types_only, data/coco.py): wrong types are refused the same way; bad values are the reader's to
drop and count.
Detections: a non-empty list; image_id an int known in the ground truth, category_id an int of its categories,
score a finite number, bbox 4 finite numbers with w, h >= 0, segmentation (where present) an RLE dict with size
(the image's [height, width] when the ground truth gives them) and counts.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Type, Union

import numpy as np

from ..io.outputs import show_path
from ..utils.errors import CocoEvalError


GT_FIX = "correct or remove that record"
DT_FIX = "correct or remove that detection"


def read_coco_json(path: Union[str, os.PathLike], what: str, *, error: Type[ValueError] = CocoEvalError) -> Any:
    """The one reader of COCO jsons (evaluation ground truth and detections, training and validation sets).

    Every failure is `error` with one line naming the file: not found, unreadable, not UTF-8 (the byte and its
    offset: JSON is UTF-8, RFC 8259; Python's own reader would say "'utf-8' codec can't decode byte 0xff" and
    nothing else), not JSON. A UTF-8 byte-order mark is skipped. What the JSON holds is check_ground_truth's /
    check_detections' to judge.
    """
    shown = show_path(path)
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {shown}")
    try:
        raw = path.read_bytes()
    except OSError as failure:
        raise error(f"cannot read {what} file {shown}: {failure.strerror or failure}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as failure:
        raise error(f"{what} file {shown} is not UTF-8 text (byte 0x{raw[failure.start]:02x} at offset "
                    f"{failure.start}); JSON files must be UTF-8: re-save it as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as failure:
        raise error(f"{what} file {shown} is not valid JSON: {failure}") from None
    except RecursionError:
        raise error(f"{what} file {shown} is nested too deeply to be a COCO json") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bbox_problem(bbox: Any) -> Optional[str]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox must be 4 finite numbers [x, y, width, height], got {_show(bbox)}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox width and height must be >= 0, got {_show(list(bbox))}"
    return None


def _rle_problem(segm: Mapping[str, Any], size: Optional[Sequence[int]]) -> Optional[str]:
    if "size" not in segm or "counts" not in segm:
        return f"segmentation RLE needs 'size' and 'counts', has {sorted(segm)}"
    rle_size = segm["size"]
    if not isinstance(rle_size, (list, tuple)) or len(rle_size) != 2 or not all(_is_int(v) and v >= 0
                                                                                 for v in rle_size):
        return f"segmentation size must be [height, width] ints, got {_show(rle_size)}"
    counts = segm["counts"]
    if not isinstance(counts, (str, bytes)) and not (isinstance(counts, list) and all(_is_int(v) for v in counts)):
        return f"segmentation counts must be an RLE string or a list of ints, got {_show(counts)}"
    if size is not None and list(rle_size) != list(size):
        return f"segmentation size {list(rle_size)} is not the image's [height, width] {list(size)}"
    return None


def rle_counts(counts: Any) -> Optional[list]:
    """The run lengths of an RLE's `counts` (a list of ints, or pycocotools' compressed string decoded as
    maskApi.c rleFrString does), or None when the string is not one (a character outside '0'..'o', cut off)."""
    if isinstance(counts, list):
        return counts
    data = counts.encode("latin-1", "replace") if isinstance(counts, str) else bytes(counts)
    runs: list = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data) or not 48 <= data[p] <= 111:
                return None
            c = data[p] - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def decodable_rle_problem(segm: Mapping[str, Any]) -> Optional[str]:
    """Why pycocotools cannot decode this RLE (checked by _rle_problem already) into its [height, width] mask, or
    None. Its decoder trusts the runs: a negative run or runs summing past height * width write past the mask
    (memory corruption), runs short of it leave pixels uninitialised; so training (which decodes masks) refuses
    both. COCOeval never decodes an RLE (its IoU works on the runs), so evaluation does not need this check."""
    runs = rle_counts(segm["counts"])
    if runs is None:
        return f"segmentation counts {_show(segm['counts'])} is not a pycocotools RLE string"
    height, width = segm["size"]
    if any(not _is_int(r) or r < 0 for r in runs) or sum(runs) != height * width:
        return (f"segmentation counts must be runs >= 0 adding up to height * width = {height * width}, got "
                f"{len(runs)} runs adding up to {sum(r for r in runs if _is_int(r))}")
    return None


def _segm_problem(segm: Any, size: Optional[Sequence[int]]) -> Optional[str]:
    if isinstance(segm, Mapping):
        return _rle_problem(segm, size)
    if not isinstance(segm, list) or not segm:
        return f"segmentation must be a list of polygons or an RLE dict, got {_show(segm)}"
    for k, poly in enumerate(segm):
        if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_is_number(v) for v in poly)):
            return (f"segmentation polygon {k} must be >= 3 points as an even list of >= 6 finite numbers "
                    f"[x1, y1, x2, y2, ...], got {_show(poly)}")
    return None


def _fail(source: str, kind: str, index: int, record: Any, problem: str, fix: str) -> CocoEvalError:
    ident = f" (id {_show(record.get('id'))})" if isinstance(record, Mapping) and "id" in record else ""
    return CocoEvalError(f"{source}: {kind} #{index}{ident}: {problem}; {fix}")


def _records(data: Mapping[str, Any], key: str, source: str) -> list:
    records = data.get(key)
    if not isinstance(records, list):
        raise CocoEvalError(f"{source}: '{key}' must be a list, got {type(records).__name__}; a COCO instances json "
                            f"has 'images', 'annotations' and 'categories' lists")
    return records


def _ids(records: list, kind: str, source: str) -> Dict[Any, Any]:
    """{id: record} of images / categories, refusing non-mappings, non-int and repeated ids."""
    seen: Dict[Any, Any] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise _fail(source, kind, index, record, f"is a {type(record).__name__}, not a mapping", GT_FIX)
        if not _is_int(record.get("id")):
            raise _fail(source, kind, index, record, f"id must be an int, got {_show(record.get('id'))}", GT_FIX)
        if record["id"] in seen:
            raise _fail(source, kind, index, record, f"id {record['id']} repeats an earlier {kind}'s; COCO ids must "
                                                     f"be unique", GT_FIX)
        seen[record["id"]] = record
    return seen


def _image_size(image: Mapping[str, Any]) -> Optional[Sequence[int]]:
    if "height" in image and "width" in image:
        return [image["height"], image["width"]]
    return None


def check_ground_truth(data: Mapping[str, Any], *, source: str = "ground truth",
                       iou_types: Sequence[str] = ("bbox",), types_only: bool = False,
                       error: Type[ValueError] = CocoEvalError) -> None:
    """Raise `error` (CocoEvalError) naming `source` and the first bad record of a COCO instances dict (module doc).

    types_only: only what a training set cannot repair (data/coco.py): the lists, mappings, int and unique ids,
    iscrowd 0 / 1, an area that is a number where present, a bbox that is a list of 4 numbers where present. Bad
    values (negative or empty boxes, unknown categories, degenerate polygons) are then the loader's to drop and count.
    """
    try:
        _check_ground_truth(data, source, iou_types, types_only)
    except CocoEvalError as failure:
        if error is CocoEvalError:
            raise
        raise error(str(failure)) from None


def _check_ground_truth(data: Mapping[str, Any], source: str, iou_types: Sequence[str], types_only: bool) -> None:
    if not isinstance(data, Mapping):
        raise CocoEvalError(f"{source}: ground truth must be a COCO instances json (a mapping), got "
                            f"{type(data).__name__}")
    images = _ids(_records(data, "images", source), "image", source)
    categories = _ids(_records(data, "categories", source), "category", source)
    if not categories and not types_only:
        raise CocoEvalError(f"{source}: 'categories' is empty; list every category id the annotations use")
    for index, image in enumerate(data["images"]):
        if types_only and not (isinstance(image.get("file_name"), str) and image["file_name"]):
            raise _fail(source, "image", index, image, f"file_name must be the image's path under the image "
                        f"folder, got {_show(image.get('file_name'))}", GT_FIX)
        for key in ("width", "height"):
            if key in image and not (_is_int(image[key]) and image[key] > 0):
                raise _fail(source, "image", index, image, f"{key} must be a positive int, got {_show(image[key])}",
                            GT_FIX)
            if key not in image and "segm" in iou_types and not types_only:
                raise _fail(source, "image", index, image, f"has no {key!r} (segm evaluation needs the image size)",
                            GT_FIX)
    seen_ann = set()
    for index, ann in enumerate(_records(data, "annotations", source)):
        if not isinstance(ann, Mapping):
            raise _fail(source, "annotation", index, ann, f"is a {type(ann).__name__}, not a mapping", GT_FIX)
        problem = (_annotation_type_problem(ann) if types_only
                   else _annotation_problem(ann, images, categories, iou_types))
        if problem is None and ann["id"] in seen_ann:
            problem = f"id {ann['id']} repeats an earlier annotation's; COCO ids must be unique"
        if problem:
            raise _fail(source, "annotation", index, ann, problem, GT_FIX)
        seen_ann.add(ann["id"])


def _annotation_type_problem(ann: Mapping[str, Any]) -> Optional[str]:
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"{key} must be an int, got {_show(ann.get(key))}"
    if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
        return f"iscrowd must be 0 or 1, got {_show(ann['iscrowd'])}"
    if "area" in ann and not _is_number(ann["area"]) and not isinstance(ann["area"], float):  # nan / inf: a value
        return f"area must be a number, got {_show(ann['area'])}"
    bbox = ann.get("bbox")
    if bbox not in (None, []) and not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                              and all(_is_number(v) or isinstance(v, float) for v in bbox)):
        return f"bbox must be a list of 4 numbers [x, y, width, height], got {_show(bbox)}"
    return None


def _annotation_problem(ann: Mapping[str, Any], images: Mapping, categories: Mapping,
                        iou_types: Sequence[str]) -> Optional[str]:
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"{key} must be an int, got {_show(ann.get(key))}"
    if ann["image_id"] not in images:
        return f"image_id {ann['image_id']} is not among the images"
    if ann["category_id"] not in categories:
        return f"category_id {ann['category_id']} is not among the categories {_show(sorted(categories)[:10])}"
    if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
        return f"iscrowd must be 0 or 1, got {_show(ann['iscrowd'])}"
    if not (_is_number(ann.get("area")) and ann["area"] >= 0):
        return f"area must be a finite number >= 0 (COCOeval sorts objects by it), got {_show(ann.get('area'))}"
    if "bbox" in ann or "bbox" in iou_types:
        problem = _bbox_problem(ann.get("bbox"))
        if problem:
            return problem
    if "segm" in iou_types:  # box-only sets often carry "segmentation": [] or null; bbox evaluation ignores it
        if "segmentation" not in ann:
            return "has no 'segmentation' (segm evaluation needs one in every annotation; evaluate bbox only)"
        return _segm_problem(ann["segmentation"], _image_size(images[ann["image_id"]]))
    return None


def check_detections(gt: Mapping[str, Any], dets: Sequence[Mapping[str, Any]], iou_types: Sequence[str], *,
                     source: str = "detections") -> None:
    """Raise CocoEvalError for empty results or the first detection with a missing or wrongly typed field, or an
    image / category id the ground truth `gt` (checked already) lacks."""
    if not dets:
        raise CocoEvalError(f"{source}: detections are empty: nothing to evaluate (COCOeval needs at least one "
                            f"result)")
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    for index, det in enumerate(dets):
        if not isinstance(det, Mapping):
            raise _fail(source, "detection", index, det, f"is a {type(det).__name__}, not a mapping", DT_FIX)
        problem = _detection_problem(det, images, cat_ids, iou_types)
        if problem:
            raise _fail(source, "detection", index, det, f"{problem} in {_show(_short(det))}", DT_FIX)


def _detection_problem(det: Mapping[str, Any], images: Mapping, cat_ids: set,
                       iou_types: Sequence[str]) -> Optional[str]:
    for key in ("image_id", "category_id", "score"):
        if key not in det:
            return f"has no {key!r}"
    for key in ("image_id", "category_id"):
        if not _is_int(det[key]):
            return f"{key} must be an int, got {_show(det[key])}"
    if det["image_id"] not in images:
        return f"image_id {det['image_id']} is not in the ground truth ({len(images)} images)"
    if det["category_id"] not in cat_ids:
        shown = sorted(cat_ids)[:10]
        return (f"category_id {det['category_id']} is not in the ground truth categories {shown}"
                f"{'...' if len(cat_ids) > 10 else ''}")
    if not _is_number(det["score"]):
        return f"score must be a finite number, got {_show(det['score'])}"
    if "segm" in iou_types and "segmentation" not in det:
        return "has no 'segmentation' (segm evaluation needs an RLE in every detection)"
    if "bbox" in iou_types and "bbox" not in det and "segmentation" not in det:
        return "has no 'bbox' (or 'segmentation') for bbox evaluation"
    if "bbox" in det:
        problem = _bbox_problem(det["bbox"])
        if problem:
            return problem
    if "segmentation" in det:
        if not isinstance(det["segmentation"], Mapping):
            return (f"segmentation must be an RLE dict {{'size': [h, w], 'counts': ...}}, got "
                    f"{_show(det['segmentation'])}")
        return _rle_problem(det["segmentation"], _image_size(images[det["image_id"]]))
    return None


def _short(obj: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "segmentation"}
