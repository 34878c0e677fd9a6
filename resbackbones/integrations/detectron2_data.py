"""tools/train_d2.py's datasets: COCO-format jsons registered with detectron2's catalogs, checked first.

    check_dataset_args(args)   # --train-json / --train-images (and test) given together and present
    register_datasets(args)    # resbackbones_train / resbackbones_test from the jsons
    coco = read_coco_json(path); uses_rle_masks(coco)

User errors are D2UserError (one line, exit 2 in the tool) instead of detectron2's assertions.
"""
import json
import os
from typing import Any, Dict

from detectron2.data.datasets import register_coco_instances

from ..utils.errors import UserError

TRAIN, TEST = "resbackbones_train", "resbackbones_test"


class D2UserError(UserError):
    """A bad command line, config file, override, dataset or device for tools/train_d2.py: one line, exit 2."""


def read_coco_json(path: str) -> Dict[str, Any]:
    """The COCO json at `path`; D2UserError when it cannot be read, is not JSON or has no categories."""
    try:
        with open(path) as handle:
            coco = json.load(handle)
    except OSError as error:
        raise D2UserError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise D2UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(coco, dict) or not coco.get("categories"):
        raise D2UserError(f"{path}: no 'categories' in the COCO json; give a COCO instances json")
    return coco


def uses_rle_masks(coco: dict) -> bool:
    """Whether a non-crowd annotation's mask is RLE (detectron2 then needs INPUT.MASK_FORMAT bitmask)."""
    # detectron2 reads polygons unless told otherwise; RLE masks (dicts) need INPUT.MASK_FORMAT bitmask.
    # Crowd regions are RLE in COCO itself but never reach training, so only non-crowd annotations count.
    return any(isinstance(a.get("segmentation"), dict) for a in coco.get("annotations", []) if not a.get("iscrowd"))


def check_dataset_args(args) -> None:
    """Each split's --SPLIT-json and --SPLIT-images given together, the json a file and the images a folder."""
    for split in ("train", "test"):
        ann, images = getattr(args, f"{split}_json"), getattr(args, f"{split}_images")
        if not ann and not images:
            continue
        if not ann or not images:
            raise D2UserError(f"--{split}-json and --{split}-images go together: give both")
        if not os.path.isfile(ann):
            raise D2UserError(f"--{split}-json {ann} not found")
        if not os.path.isdir(images):
            raise D2UserError(f"--{split}-images {images} is not a folder")


def register_datasets(args) -> None:
    """register_coco_instances for the given jsons (re-registers a name when called again with other files)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    check_dataset_args(args)
    for name, ann, images in ((TRAIN, args.train_json, args.train_images), (TEST, args.test_json, args.test_images)):
        if not ann:
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, ann, images)
