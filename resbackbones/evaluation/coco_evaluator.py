"""COCO evaluation of a detector through the one evaluation path (evaluation/inference.py: inference_on_dataset).

    evaluator = COCOEvaluator(gt, label_to_category, iou_types=("bbox", "segm"), max_dets=(1, 10, 100))
    metrics = inference_on_dataset(model, batches, evaluator, device=device, amp="bf16")
    metrics["bbox"]["AP"]; metrics["per_category"]["bbox"]; evaluator.detections   # the COCO results scored

Batches are lists of (image float [3, H, W] RGB 0-1, target with "image_id"); each rank runs its share, evaluate()
gathers the detections of every rank and scores them on rank 0 (the other ranks get {}). Used by train_det (periodic,
final and --eval-only evaluations) and tools/eval_coco.py --checkpoint, so the three report the same numbers.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from ..utils.comm import all_gather_objects
from .coco import DEFAULT_MAX_DETS, evaluate_coco
from .coco_results import to_coco_results
from .inference import DatasetEvaluator


def restrict_ground_truth(gt: Mapping[str, Any], image_ids: Sequence[int]) -> Mapping[str, Any]:
    """`gt` (a COCO instances dict) with only the images `image_ids` and their annotations (crowd regions kept:
    COCOeval ignores them); `gt` itself when that is all of it."""
    ids = set(image_ids)
    if ids == {im["id"] for im in gt["images"]}:
        return gt
    return dict(gt, images=[im for im in gt["images"] if im["id"] in ids],
                annotations=[a for a in gt["annotations"] if a["image_id"] in ids])


def per_category_without_detections(gt: Mapping[str, Any], iou_types: Sequence[str]) -> Dict[str, Dict]:
    """The "per_category" report when nothing was detected (COCOeval cannot run on an empty result list):
    AP = AP50 = 0 for every category with a non-crowd ground-truth object, -1 (undefined) for the others."""
    present = {a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0)}
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    names = [str(c.get("name", c["id"])) for c in cats]
    report = {}
    for cat, name in zip(cats, names):
        value = 0.0 if cat["id"] in present else -1.0
        key = name if names.count(name) == 1 else f"{name} (id {cat['id']})"
        report[key] = {"id": int(cat["id"]), "AP": value, "AP50": value}
    return {t: dict(report) for t in iou_types}


class COCODetections(DatasetEvaluator):
    """Collects a detector's outputs as COCO results (label_to_category: model label -> category id of the data;
    mask_threshold: mask probability -> RLE cut); evaluate() gathers every rank's into .detections, returns {}."""

    def __init__(self, label_to_category: Mapping[int, int], *, mask_threshold: float = 0.5):
        self.label_to_category, self.mask_threshold = dict(label_to_category), mask_threshold
        self.results: List[Dict[str, Any]] = []  # this rank's
        self.detections: List[Dict[str, Any]] = []  # every rank's, after evaluate()

    def reset(self) -> None:
        self.results, self.detections = [], []

    def inputs(self, batch, device: torch.device) -> List[torch.Tensor]:
        return [image.to(device) for image, _ in batch]

    def process(self, batch, outputs) -> None:
        self.results += to_coco_results(outputs, [target["image_id"] for _, target in batch], self.label_to_category,
                                        mask_threshold=self.mask_threshold)

    def evaluate(self) -> Dict[str, Any]:
        self.detections = [r for part in all_gather_objects(self.results) for r in part]
        return {}


class COCOEvaluator(COCODetections):
    """COCO stats of detector outputs against `gt` (a COCO instances dict of exactly the evaluated images).

    evaluate() -> {iou type: {"AP", "AP50", ... 12 COCOeval stats}, "max_dets", "ap_unit", "per_category"} on rank 0,
    {} on the others; .detections holds the COCO results scored.
    """

    def __init__(self, gt: Mapping[str, Any], label_to_category: Mapping[int, int], *, iou_types: Sequence[str],
                 mask_threshold: float = 0.5, max_dets: Sequence[int] = DEFAULT_MAX_DETS, backend: str = "auto",
                 gt_source: str = ""):
        super().__init__(label_to_category, mask_threshold=mask_threshold)
        self.gt, self.iou_types = gt, tuple(iou_types)
        self.max_dets, self.backend, self.gt_source = list(max_dets), backend, gt_source

    def evaluate(self) -> Dict[str, Any]:
        super().evaluate()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return {}
        out: Dict[str, Any] = {}
        stats: Optional[dict] = None
        if self.detections:
            stats = evaluate_coco(self.gt, self.detections, iou_types=self.iou_types, backend=self.backend,
                                  max_dets=self.max_dets, gt_source=self.gt_source)
            out = {t: dict(s.stats) for t, s in stats.items()}
        else:  # nothing detected: COCOeval cannot load an empty result list; every stat is 0 by definition
            out = {t: {"AP": 0.0} for t in self.iou_types}
        out["max_dets"] = list(self.max_dets)  # COCOeval maxDets: AP is measured at the last
        out["ap_unit"] = "fraction (0-1)"  # COCOeval's; the console prints the same numbers
        out["per_category"] = ({t: s.per_category_report() for t, s in stats.items()} if stats is not None
                               else per_category_without_detections(self.gt, self.iou_types))
        return out
