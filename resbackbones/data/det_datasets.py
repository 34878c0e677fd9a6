"""Build a detection dataset from a DatasetConfig (COCO json + images, or the embedded shapes set)."""
import os
from pathlib import Path
from typing import Mapping

from .coco import CocoDetection
from .errors import DataError
from .shapes import write_shapes_coco


def default_data_home() -> Path:
    """$RESBACKBONES_DATA, else ~/.cache/resbackbones: where generated data (the shapes set) is written."""
    return Path(os.environ.get("RESBACKBONES_DATA", Path.home() / ".cache" / "resbackbones"))


def shapes_root(dcfg, split: str) -> Path:
    if dcfg.root:
        return Path(dcfg.root)
    name = f"{split}_seed{dcfg.seed}_n{dcfg.num_images}_s{dcfg.image_size}"
    return default_data_home() / "shapes" / name


# Shown when a config's COCO-format data is absent (e.g. COCO 2017 on a fresh clone): the keys to set, with a
# real set that lives next to this repository as the example.
_OTHER_DATA_EXAMPLE = (
    "data.train.ann_file=../shared/data/bccd/train.json data.train.image_root=../shared/data/bccd/images "
    "data.val.ann_file=../shared/data/bccd/val.json data.val.image_root=../shared/data/bccd/images "
    "data.train.with_masks=false data.val.with_masks=false model.num_classes=3 (or --config configs/bccd_frcnn_r50.yaml)"
)


def check_data_paths(splits: Mapping[str, object]) -> None:
    """Raise one DataError naming every missing ann_file / image_root of the COCO-kind splits ({"train": dcfg, ...}),
    with the paths resolved against the working directory and the overrides that point the config elsewhere."""
    missing = []
    for split, dcfg in splits.items():
        if dcfg.kind != "coco":
            continue
        if not dcfg.ann_file:
            missing.append(f"data.{split}.ann_file is empty")
            continue
        for key, exists in (("ann_file", Path(dcfg.ann_file).is_file()), ("image_root", Path(dcfg.image_root).is_dir())):
            if not exists:
                missing.append(f"data.{split}.{key}={getattr(dcfg, key)}")
    if missing:
        raise DataError(
            f"data not found: {', '.join(missing)} (relative paths from {Path.cwd()}); put the data there (COCO 2017: "
            f"projects/coco_detection/README.md) or point the config at a COCO-format set, e.g. {_OTHER_DATA_EXAMPLE}"
        )


def build_det_dataset(dcfg, *, split: str, transforms=None, cache_images: bool = False) -> CocoDetection:
    """dcfg: a config.det.DatasetConfig; split names it in errors ("train" / "val")."""
    if dcfg.kind == "shapes":
        root = write_shapes_coco(shapes_root(dcfg, split), num_images=dcfg.num_images, seed=dcfg.seed,
                                 image_size=dcfg.image_size)
        ann_file, image_root = root / "annotations.json", root / "images"
    else:
        if not dcfg.ann_file:
            raise DataError(f"data.{split}.ann_file is empty: set it to a COCO json (or data.{split}.kind=shapes)")
        ann_file, image_root = Path(dcfg.ann_file), Path(dcfg.image_root)
        if not ann_file.is_file():
            raise DataError(f"data.{split}.ann_file not found: {ann_file}")
        if not image_root.is_dir():
            raise DataError(f"data.{split}.image_root not found: {image_root}")
    dataset = CocoDetection(ann_file, image_root, with_masks=dcfg.with_masks, filter_empty=dcfg.filter_empty,
                            cache_images=cache_images, transforms=transforms)
    if dcfg.limit:
        dataset.ids = dataset.ids[: dcfg.limit]
    return dataset
