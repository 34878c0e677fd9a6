#!/usr/bin/env python
"""Check a COCO 2017 folder before a long training run starts.

    python projects/coco_detection/check_coco_layout.py datasets/coco
    python projects/coco_detection/check_coco_layout.py /data/coco --sample 200 --splits val2017

Expected layout (what configs/base_coco.yaml points at through data.{train,val}.{ann_file,image_root}):

    ROOT/annotations/instances_train2017.json   118,287 images, 860,001 instances, 80 categories
    ROOT/annotations/instances_val2017.json       5,000 images,  36,781 instances, 80 categories
    ROOT/train2017/*.jpg                         118,287 files
    ROOT/val2017/*.jpg                             5,000 files

Checks, per split: the annotation json exists and parses with images/annotations/categories lists; the image
folder exists; every image the json names is a file there (missing ones are counted and the first few named);
the file count against the full COCO 2017 count (a smaller set is reported, not refused: subsets are legitimate);
a random sample of images decodes with OpenCV and has the width/height the json states; annotation boxes are inside
their image; Mask R-CNN needs polygons/RLE (counted). Exit code 0 if every check passed, 1 otherwise; each problem
is one line saying what is wrong with which file and what to do.
"""
import argparse
import json
import random
import sys
from pathlib import Path
from typing import List

FULL_COUNTS = {"train2017": (118287, 860001), "val2017": (5000, 36781)}  # images, instances (COCO 2017)
NUM_CATEGORIES = 80


class Report:
    """Collects ok / warning / error lines; errors decide the exit code."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.lines: List[str] = []

    def ok(self, text: str) -> None:
        self.lines.append(f"  ok    {text}")

    def warn(self, text: str) -> None:
        self.lines.append(f"  warn  {text}")

    def error(self, text: str) -> None:
        self.errors.append(text)
        self.lines.append(f"  ERROR {text}")


def check_split(root: Path, split: str, sample: int, report: Report, seed: int = 0) -> None:
    ann_path = root / "annotations" / f"instances_{split}.json"
    image_dir = root / split
    if not ann_path.is_file():
        report.error(f"{ann_path} not found: download annotations_trainval2017.zip from cocodataset.org and unzip "
                     f"it into {root} (it creates annotations/)")
        data = None
    else:
        try:
            data = json.loads(ann_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            report.error(f"{ann_path} is not valid JSON ({error}); the download may be truncated - fetch it again")
            data = None
    if data is not None:
        missing_keys = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
        if missing_keys:
            report.error(f"{ann_path} lacks the list(s) {missing_keys}: not a COCO instances file "
                         f"(captions/keypoints files are not instances files)")
            data = None
    if not image_dir.is_dir():
        report.error(f"{image_dir}/ not found: unzip {split}.zip into {root} (it creates {split}/)")
        return
    files = {p.name for p in image_dir.iterdir() if p.is_file()}
    if data is None:
        report.warn(f"{image_dir}/ holds {len(files):,} files (not compared: no usable annotation file)")
        return

    images, annotations = data["images"], data["annotations"]
    full_images, full_instances = FULL_COUNTS.get(split, (None, None))
    summary = f"{ann_path.name}: {len(images):,} images, {len(annotations):,} instances, {len(data['categories'])} categories"
    if full_images is not None and (len(images), len(annotations)) != (full_images, full_instances):
        report.warn(summary + f" (full COCO 2017 {split}: {full_images:,} images, {full_instances:,} instances; "
                              f"fine for a subset, but published numbers need the full set)")
    else:
        report.ok(summary)
    if len(data["categories"]) != NUM_CATEGORIES:
        report.warn(f"{ann_path.name}: {len(data['categories'])} categories; the COCO configs set "
                    f"model.num_classes={NUM_CATEGORIES} - set it to {len(data['categories'])} for this set")

    named = [im.get("file_name", "") for im in images]
    missing = [name for name in named if name not in files]
    if missing:
        report.error(f"{len(missing):,} of {len(named):,} images named in {ann_path.name} are not in {image_dir}/ "
                     f"(first: {', '.join(missing[:3])}); the unzip may be incomplete")
    else:
        report.ok(f"{split}/: all {len(named):,} images of the json are there ({len(files):,} files in the folder)")

    by_id = {im["id"]: im for im in images if "id" in im}
    outside = [a for a in annotations if _box_outside(a, by_id.get(a.get("image_id")))]
    if outside:
        report.error(f"{len(outside):,} boxes in {ann_path.name} lie outside their image or reference an unknown "
                     f"image_id (first annotation id: {outside[0].get('id')})")
    with_masks = sum(1 for a in annotations if a.get("segmentation"))
    if annotations and with_masks < len(annotations):
        report.warn(f"{len(annotations) - with_masks:,} of {len(annotations):,} instances have no segmentation: "
                    f"Mask R-CNN configs drop them (Faster R-CNN is unaffected)")

    present = [im for im in images if im.get("file_name") in files]
    chosen = random.Random(seed).sample(present, min(sample, len(present)))
    bad = _unreadable(image_dir, chosen)
    if bad:
        report.error(f"{len(bad)} of {len(chosen)} sampled images in {image_dir}/ are unreadable or have another "
                     f"size than the json says: {'; '.join(bad[:3])}")
    elif chosen:
        report.ok(f"{split}/: {len(chosen)} sampled images decode with the sizes the json states")


def _box_outside(annotation: dict, image) -> bool:
    if image is None:
        return True
    bbox = annotation.get("bbox")
    if not bbox or len(bbox) != 4:
        return True
    x, y, w, h = bbox
    tolerance = 1.0  # COCO's own boxes overshoot by a fraction of a pixel
    return x < -tolerance or y < -tolerance or w < 0 or h < 0 or x + w > image["width"] + tolerance \
        or y + h > image["height"] + tolerance


def _unreadable(image_dir: Path, images: list) -> List[str]:
    import cv2

    bad = []
    for im in images:
        path = image_dir / im["file_name"]
        array = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if array is None:
            bad.append(f"{path.name} does not decode")
        elif (array.shape[1], array.shape[0]) != (im.get("width"), im.get("height")):
            bad.append(f"{path.name} is {array.shape[1]}x{array.shape[0]}, json says {im.get('width')}x{im.get('height')}")
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="COCO folder holding annotations/, train2017/, val2017/")
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"], help="splits to check")
    parser.add_argument("--sample", type=int, default=100, help="images per split to decode (default 100)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"ERROR {root} is not a folder; pass the COCO root (holding annotations/, train2017/, val2017/)")
        return 1
    report = Report()
    for split in args.splits:
        report.lines.append(f"{split}:")
        check_split(root, split, args.sample, report)
    print("\n".join(report.lines))
    if report.errors:
        print(f"{len(report.errors)} problem(s) found in {root}; fix them before training")
        return 1
    print(f"{root}: layout OK. Train with e.g.\n  python tools/train_det.py --config configs/frcnn_r50.yaml "
          f"data.train.ann_file={root}/annotations/instances_train2017.json data.train.image_root={root}/train2017 "
          f"data.val.ann_file={root}/annotations/instances_val2017.json data.val.image_root={root}/val2017")
    return 0


if __name__ == "__main__":
    sys.exit(main())
