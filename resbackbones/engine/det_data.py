"""The data of a detection run: the train / val COCO sets with their transforms, checked before any training
(paths, class count, the ground truth COCOeval will score against, image sizes the resize can handle)."""
from typing import Optional, Tuple

from ..config.det import DetTrainConfig
from ..data.det_datasets import build_det_dataset, check_data_paths
from ..data.det_transforms import build_det_transforms
from ..data.resizable import check_coco_images_resizable
from ..data.coco_format import check_ground_truth


def build_det_data(cfg: DetTrainConfig, *, eval_only: bool, iou_types) -> Tuple[Optional[object], object]:
    """(train set or None with eval_only, val set); every check raises in one line (exit 2 through the tools)."""
    check_data_paths({"val": cfg.data.val} if eval_only else {"train": cfg.data.train, "val": cfg.data.val})
    val_set = build_det_dataset(cfg.data.val, split="val", transforms=build_det_transforms(train=False),
                                cache_images=cfg.data.cache_images)
    train_set = None
    if not eval_only:
        train_set = build_det_dataset(cfg.data.train, split="train", cache_images=cfg.data.cache_images,
                                      transforms=build_det_transforms(train=True, flip_prob=cfg.data.flip_prob))
        _check_classes(cfg, train_set, "train")
    _check_classes(cfg, val_set, "val")
    # The ground truth COCOeval will score against, type-checked now rather than after training (exit 2).
    check_ground_truth(val_set.coco.dataset, source=str(val_set.ann_file), iou_types=iou_types)
    icfg = cfg.model.input  # a 10000x50 strip would shrink under a pixel across and fail inside interpolate
    for split in (train_set, val_set):
        if split is not None:
            check_coco_images_resizable(split.coco.dataset.get("images", []), source=split.ann_file,
                                        min_size=icfg.min_size if split is train_set else icfg.min_size[-1],
                                        max_size=icfg.max_size)
    return train_set, val_set


def _check_classes(cfg: DetTrainConfig, dataset, split: str) -> None:
    if dataset.num_classes != cfg.model.num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but data.{split} ({dataset.ann_file}) has "
                         f"{dataset.num_classes} categories")
