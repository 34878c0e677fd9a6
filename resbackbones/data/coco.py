"""COCO-format detection / instance segmentation dataset: a json (pycocotools index) + an image folder.

    ds = CocoDetection("annotations.json", "images/", transforms=build_det_transforms(train=True))
    image, target = ds[0]     # image: float [3, H, W] in [0, 1] RGB (with the default transforms)
    target = {"boxes": [K, 4] float xyxy pixels, "labels": [K] int64 in 1..C, "masks": [K, H, W] uint8,
              "image_id": int, "orig_size": (H, W)}
    ds.label_to_category      # {1: 1, 2: 2, ..., 80: 90}: contiguous label -> the json's category id

Like COCO (and torchvision/detectron2 training), crowd annotations (iscrowd=1) are not training targets; COCOeval
uses them from the json itself as "ignore" regions. Invalid boxes are repaired or dropped, and the counts are kept
in `ds.dropped` (reason -> count) and reported once by `describe()`.
"""
import contextlib
import io
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .coco_format import _rle_problem, check_ground_truth, decodable_rle_problem, read_coco_json
from .errors import DataError, show_path
from .folders import read_image

MIN_BOX_SIDE = 1.0  # pixels: boxes thinner than this after clipping carry no trainable signal


def _load_coco(ann_file: Path):
    """The COCO load path of training and evaluation sets: read_coco_json (missing, unreadable, not UTF-8, not JSON:
    one line naming the file), the ids and types checked (naming the file, the record and its id, the field), then
    pycocotools' own index built from the checked dict (COCO(path) would re-read the file and fail on a wrong type
    with a bare KeyError / TypeError)."""
    from pycocotools.coco import COCO  # the reference COCO index (and polygon / RLE codec)

    dataset = read_coco_json(ann_file, "COCO annotation", error=DataError)
    _refuse_duplicate_ids(dataset, ann_file)
    # Wrongly typed fields (string ids, iscrowd 2, a bbox of strings, a malformed RLE) are refused naming the
    # record; bad values (empty or negative boxes, unknown categories, degenerate polygons) are dropped and counted
    # by CocoDetection.
    check_ground_truth(dataset, source=show_path(ann_file), types_only=True, error=DataError)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _refuse_duplicate_ids(dataset: Any, ann_file: Path) -> None:
    """pycocotools indexes annotations and images by id, so a repeated id silently replaces the first entry in
    COCOeval's ground truth while training would still see both: refuse, naming the id. (Records that are not
    mappings, or ids that are not ints, are check_ground_truth's to name.)"""
    if not isinstance(dataset, dict):
        return
    for kind in ("images", "annotations"):
        records = dataset.get(kind)
        if not isinstance(records, list):
            continue
        counts = Counter(entry["id"] for entry in records
                         if isinstance(entry, dict) and isinstance(entry.get("id"), int))
        repeated = sorted((i for i, n in counts.items() if n > 1), key=str)
        if repeated:
            raise DataError(f"{ann_file}: duplicate {kind[:-1]} id(s) {repeated[:5]} ({len(repeated)} in all); "
                            f"COCO ids must be unique")


class CocoDetection(torch.utils.data.Dataset):
    """Images + instance targets from a COCO json.

    ann_file: COCO instances json; image_root: folder holding each image's `file_name`.
    with_masks: decode `segmentation` (polygons, RLE or uncompressed RLE) into [K, H, W] uint8 masks; annotations
      without a usable segmentation are then dropped (counted as "no_segmentation"). Box-only sets (BCCD, raccoon)
      use with_masks=False.
    filter_empty: drop images with no (valid, non-crowd) annotation from the index; otherwise they are kept with
      empty targets (boxes [0, 4]), which torchvision's detectors train on as background-only images.
    cache_images: keep decoded images in memory after the first read (small sets: no per-step decoding).
    transforms: callable (image uint8 [H, W, 3] RGB, target dict of numpy arrays) -> (image, target); see
      det_transforms.build_det_transforms. Without it images are returned as uint8 [H, W, 3] numpy arrays.
    """

    def __init__(self, ann_file: Union[str, os.PathLike], image_root: Union[str, os.PathLike], *,
                 with_masks: bool = True, filter_empty: bool = False, cache_images: bool = False,
                 transforms: Optional[Callable] = None, image_ids: Optional[Sequence[int]] = None):
        self.ann_file, self.image_root = Path(ann_file), Path(image_root)
        if not self.image_root.is_dir():
            raise DataError(f"COCO image folder not found: {self.image_root} (for {self.ann_file})")
        self.coco = _load_coco(self.ann_file)
        self.with_masks, self.transforms, self.cache_images = with_masks, transforms, cache_images
        cat_ids = sorted(self.coco.getCatIds())
        self.categories = [self.coco.cats[c] for c in cat_ids]
        # Contiguous labels 1..C in increasing category-id order (torchvision / detectron2); 0 is background.
        self.category_to_label: Dict[int, int] = {c: i for i, c in enumerate(cat_ids, start=1)}
        self.label_to_category: Dict[int, int] = {i: c for c, i in self.category_to_label.items()}
        self.dropped: Counter = Counter()
        ids = sorted(self.coco.imgs) if image_ids is None else [int(i) for i in image_ids]
        missing = [i for i in ids if i not in self.coco.imgs]
        if missing:
            raise DataError(f"image ids {missing[:5]} are not in {self.ann_file}")
        self.num_sizes_read = self._fill_missing_sizes(ids)
        self._targets: Dict[int, Dict[str, Any]] = {}
        for image_id in ids:
            self._targets[image_id] = self._clean_annotations(image_id)
        self.ids = [i for i in ids if not (filter_empty and len(self._targets[i]["anns"]) == 0)]
        self.num_filtered_empty = len(ids) - len(self.ids)
        if not self.ids:  # an empty set only fails later, far from its cause (an empty sampler, COCOeval)
            why = "has no images" if not ids else (f"has no image with a usable annotation (filter_empty; dropped: "
                                                  f"{dict(self.dropped) or 'none'})")
            raise DataError(f"{self.ann_file} {why}")
        self._cache: Dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def describe(self) -> str:
        """One line: images, instances, dropped annotations by reason, filtered empty images."""
        instances = sum(len(self._targets[i]["anns"]) for i in self.ids)
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"{self.ann_file.name}: {len(self.ids)} images, {instances} instances, {self.num_classes} classes; "
                f"dropped annotations: {dropped}; images without annotations filtered: {self.num_filtered_empty}")

    def _fill_missing_sizes(self, ids: Sequence[int]) -> int:
        """Give every image record without `width` / `height` the size of its decoded file; returns how many.

        pycocotools, torchvision and detectron2 train on such a json (detectron2 reads the size from the image), so
        refusing it would be stricter than the reference; the size is needed here to clip boxes and draw masks.
        It is read by decoding the file with read_image, the same decode as training (EXIF orientation applied),
        so it cannot disagree with the pixels; a missing or undecodable file is one line naming the file and the
        image id. The record is updated in place, so the evaluation ground truth has the size too (issue 21).
        """
        count = 0
        for image_id in ids:
            info = self.coco.imgs[image_id]
            if "width" in info and "height" in info:
                continue
            path = self.image_path(image_id)
            try:
                height, width = read_image(path).shape[:2]
            except DataError as error:
                raise DataError(f"image id {image_id} in {show_path(self.ann_file)} has no width / height, and its "
                                f"size cannot be read from the file: {error}") from None
            for key, value in (("width", int(width)), ("height", int(height))):
                if info.setdefault(key, value) != value:
                    raise DataError(f"image {show_path(path)} is {width}x{height} but {show_path(self.ann_file)} "
                                    f"says {key} {info[key]} (image id {image_id})")
            count += 1
        return count

    # -- annotations ------------------------------------------------------------------------------------------
    def _clean_annotations(self, image_id: int) -> Dict[str, Any]:
        """Valid, non-crowd annotations of one image with boxes clipped to the image (xyxy float)."""
        info = self.coco.imgs[image_id]
        width, height = float(info["width"]), float(info["height"])
        kept, boxes = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.dropped["crowd"] += 1
                continue
            bbox = ann.get("bbox")
            if not bbox or len(bbox) != 4 or not all(np.isfinite(bbox)):
                self.dropped["malformed_box"] += 1
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                self.dropped["non_positive_size"] += 1
                continue
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
                self.dropped["outside_image"] += 1
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                self.dropped["clipped (kept)"] += 1
            if self.with_masks:
                self._refuse_undecodable(ann, image_id, int(height), int(width))
            if self.with_masks and not self._valid_segmentation(ann.get("segmentation")):
                self.dropped["no_segmentation"] += 1
                continue
            if ann["category_id"] not in self.category_to_label:
                self.dropped["unknown_category"] += 1
                continue
            kept.append(ann)
            boxes.append([x1, y1, x2, y2])
        return {"anns": kept, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4)}

    def _refuse_undecodable(self, ann: Dict[str, Any], image_id: int, height: int, width: int) -> None:
        """DataError naming the file, the annotation id and the field for a segmentation pycocotools would decode
        into garbage or past the end of the mask: an RLE whose size is not the image's or whose runs do not cover
        it exactly, a polygon with NaN / inf (its rasteriser casts them to int). Degenerate polygons (< 3 points)
        are not errors: they are dropped and counted, as before."""
        segm = ann.get("segmentation")
        problem = None
        if isinstance(segm, dict):
            problem = _rle_problem(segm, [height, width]) or decodable_rle_problem(segm)
        elif isinstance(segm, list):
            for k, poly in enumerate(segm):
                if isinstance(poly, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and np.isfinite(v) for v in poly):
                    problem = f"segmentation polygon {k} must be finite numbers, got {poly[:8]}"
                    break
        if problem:
            raise DataError(f"{show_path(self.ann_file)}: annotation id {ann['id']} (image id {image_id}): "
                            f"{problem}; correct or remove that record")

    @staticmethod
    def _valid_segmentation(segm: Any) -> bool:
        if isinstance(segm, dict):  # RLE (compressed or not)
            return "counts" in segm and "size" in segm
        if isinstance(segm, list):  # polygons: each needs >= 3 points (6 numbers)
            return any(isinstance(p, list) and len(p) >= 6 for p in segm)
        return False

    def _masks(self, anns: List[Dict[str, Any]], height: int, width: int) -> np.ndarray:
        if not anns:
            return np.zeros((0, height, width), np.uint8)
        masks = []
        for ann in anns:
            segm = ann["segmentation"]
            if isinstance(segm, list):  # drop degenerate polygon parts (< 3 points) that pycocotools rejects
                ann = dict(ann, segmentation=[p for p in segm if len(p) >= 6])
            masks.append(self.coco.annToMask(ann))
        return np.stack(masks).astype(np.uint8)

    # -- images -----------------------------------------------------------------------------------------------
    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.coco.imgs[image_id]["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB; DataError naming the file if it is missing, unreadable or of the wrong size."""
        if image_id in self._cache:
            return self._cache[image_id]
        path = self.image_path(image_id)
        if not path.is_file():
            raise DataError(f"image file not found: {path} (image id {image_id} in {self.ann_file})")
        image = read_image(path)
        info = self.coco.imgs[image_id]
        if image.shape[:2] != (info["height"], info["width"]):
            # OpenCV applies the EXIF orientation (as detectron2 does); a json made on the stored, unrotated pixels
            # (PIL without exif_transpose) has width and height swapped and its boxes would be wrong: refuse.
            hint = (" (the file's EXIF orientation rotates it by 90 degrees: annotate the rotated image, or strip the "
                    "tag)" if image.shape[:2] == (info["width"], info["height"]) else "")
            raise DataError(f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.ann_file.name} says "
                            f"{info['width']}x{info['height']}{hint}")
        if self.cache_images:
            self._cache[image_id] = image
        return image

    def raw_target(self, image_id: int) -> Dict[str, Any]:
        """Target as numpy arrays (before transforms): boxes [K, 4] float32 xyxy, labels [K] int64, masks."""
        info = self.coco.imgs[image_id]
        entry = self._targets[image_id]
        target = {
            "boxes": entry["boxes"].copy(),
            "labels": np.asarray([self.category_to_label[a["category_id"]] for a in entry["anns"]], np.int64),
            "image_id": int(image_id),
            "orig_size": (int(info["height"]), int(info["width"])),
        }
        if self.with_masks:
            if "masks" not in entry or not self.cache_images:
                masks = self._masks(entry["anns"], int(info["height"]), int(info["width"]))
                if self.cache_images:
                    entry["masks"] = masks
            else:
                masks = entry["masks"]
            target["masks"] = masks
        return target

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image, target = self.load_image(image_id), self.raw_target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
