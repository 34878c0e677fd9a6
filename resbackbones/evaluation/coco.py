"""COCO detection / instance segmentation metrics: pycocotools COCOeval (the reference) or faster-coco-eval.

    result = evaluate_coco("instances_val.json", detections, iou_types=("bbox", "segm"))
    result["bbox"].stats        # {"AP": 0.372, "AP50": ..., "ARl": ...}: COCOeval.stats, fractions, -1 = undefined
    result["bbox"].per_category # {category_id: AP@[.5:.95]} (-1 where the category has no ground truth)
    result["bbox"].per_category_report()  # {name: {"id", "AP", "AP50"}}: what eval.json and train_det report

Detections are COCO results: [{"image_id", "category_id", "score", "bbox": [x, y, w, h], "segmentation": RLE}],
as a list or a path to a results json. Every input problem raises CocoEvalError with one line naming it.
For segm, detections are evaluated without their "bbox" key (as detectron2 does) so that a detection's area is its
mask area, not its box area, when COCOeval sorts it into small / medium / large.

max_dets is COCOeval's params.maxDets (three increasing caps per image, default [1, 10, 100]): AR1 / AR10 are
measured at the first two, every other stat at the third (the names keep COCO's "AR100"). Crowded sets (DSB2018
nuclei: up to 375 per image) need the third above their most instances per image. pycocotools' summarize() reads AP
at a hard-coded 100 (-1 when 100 is not among maxDets); here AP is read at max_dets[2], as detectron2 does.
"""
import contextlib
import copy
import io
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..config.ranges import check_max_dets  # noqa: F401 (re-exported: evaluation.coco.check_max_dets)
from ..data.coco_format import (CocoEvalError, check_detections, check_ground_truth,  # noqa: F401 (re-exported)
                          read_coco_json)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
DEFAULT_MAX_DETS = (1, 10, 100)
BACKENDS = ("auto", "pycocotools", "fast", "faster_coco_eval")

GroundTruth = Union[str, os.PathLike, Mapping[str, Any], Any]
Detections = Union[str, os.PathLike, Sequence[Mapping[str, Any]]]


@dataclass
class CocoStats:
    """The 12 COCOeval.stats of one iou type, AP per category and the backend that computed them."""

    iou_type: str
    stats: Dict[str, float]
    per_category: Dict[int, float]
    category_names: Dict[int, str] = field(default_factory=dict)
    backend: str = "pycocotools"
    per_category_ap50: Dict[int, float] = field(default_factory=dict)

    def per_category_report(self) -> Dict[str, Dict[str, Any]]:
        """{category name: {"id", "AP", "AP50"}} in category-id order, fractions 0-1, -1 = undefined (no ground
        truth of that category; detectron2 writes NaN). A name two categories share gets its id appended."""
        names = [self.category_names.get(c, str(c)) for c in self.per_category]
        report = {}
        for (cat_id, ap), name in zip(self.per_category.items(), names):
            key = name if names.count(name) == 1 else f"{name} (id {cat_id})"
            report[key] = {"id": cat_id, "AP": ap, "AP50": self.per_category_ap50.get(cat_id, -1.0)}
        return report

    def table(self) -> str:
        """Per-category AP and AP50 as a text table (fractions 0-1, the unit of COCOeval.stats and of every AP this
        package prints or writes), categories with ground truth only."""
        return per_category_table(self.per_category_report())


def per_category_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """{name: {"id", "AP", "AP50"}} (CocoStats.per_category_report, eval.json's "per_category") as text lines:
    name, id, AP, AP50 (fractions 0-1); categories without ground truth (AP -1) counted in one line at the end."""
    lines = [f"{'category':<24} {'id':>4} {'AP (0-1)':>8} {'AP50':>6}"]
    undefined = 0
    for name, row in report.items():
        if row["AP"] < 0:  # no ground truth of this category: AP undefined (-1), left out of the table
            undefined += 1
            continue
        lines.append(f"{name[:24]:<24} {row['id']:>4} {row['AP']:8.3f} {row['AP50']:6.3f}")
    if undefined:
        lines.append(f"({undefined} categories without ground truth: AP undefined)")
    return "\n".join(lines)


# -- inputs -------------------------------------------------------------------------------------------------------
def load_json(path: Union[str, os.PathLike], what: str) -> Any:
    """data/coco_format.read_coco_json: the one COCO json reader (errors name the file: missing, not UTF-8, not JSON)."""
    return read_coco_json(path, what)


def _gt_dict(gt: GroundTruth) -> Dict[str, Any]:
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # a pycocotools / faster-coco-eval COCO object
        return gt.dataset
    data = load_json(gt, "ground-truth") if isinstance(gt, (str, os.PathLike)) else gt
    if not isinstance(data, Mapping) or not all(k in data for k in ("images", "annotations", "categories")):
        where = f"{gt}: " if isinstance(gt, (str, os.PathLike)) else ""
        raise CocoEvalError(f"{where}ground truth must be a COCO instances json with 'images', 'annotations', "
                            f"'categories'")
    return dict(data)


def _dt_list(detections: Detections) -> List[Dict[str, Any]]:
    data = load_json(detections, "detections") if isinstance(detections, (str, os.PathLike)) else detections
    if not isinstance(data, (list, tuple)):
        where = f"{detections}: " if isinstance(detections, (str, os.PathLike)) else ""
        raise CocoEvalError(f"{where}detections must be a list of COCO results, got {type(data).__name__}")
    if not all(isinstance(d, Mapping) for d in data):
        return list(data)  # check_detections names the first record that is not a mapping
    return [dict(d) for d in data]


# -- evaluation ---------------------------------------------------------------------------------------------------
def _backend_classes(backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def resolve_backend(backend: str) -> str:
    """"auto" -> "fast" (coco_fast.py: pycocotools' arithmetic, batched; tested bit-identical).

    "faster_coco_eval" is offered for comparison only: its precision values differ from pycocotools' in the last
    bit (AP off by ~1e-17 on the COCO sample), so it is never chosen automatically.
    """
    if backend not in BACKENDS:
        raise CocoEvalError(f"unknown COCO eval backend {backend!r}; available: {', '.join(BACKENDS)}")
    return "fast" if backend == "auto" else backend


def _quiet():
    # pycocotools prints progress to stdout; tools print their own summary.
    return contextlib.redirect_stdout(io.StringIO())


def _ap_at_last_max_dets(evaluator) -> float:
    """stats[0] (AP @[.5:.95], all areas) at maxDets[2]: pycocotools' own expression, its maxDets index made
    explicit (its summarize() looks for 100 and reports -1 when 100 is not among maxDets)."""
    area_all = list(evaluator.params.areaRngLbl).index("all")
    values = np.asarray(evaluator.eval["precision"])[:, :, :, area_all, 2]
    return float(np.mean(values[values > -1])) if (values > -1).any() else -1.0


def _run(gt: Dict[str, Any], dets: List[Dict[str, Any]], iou_type: str, backend: str,
         max_dets: Sequence[int] = DEFAULT_MAX_DETS):
    max_dets = check_max_dets(max_dets)
    evaluator = _evaluate(gt, dets, iou_type, backend, max_dets)
    if max_dets[2] != 100:
        evaluator.stats[0] = _ap_at_last_max_dets(evaluator)
    return evaluator


def _evaluate(gt: Dict[str, Any], dets: List[Dict[str, Any]], iou_type: str, backend: str,
              max_dets: Tuple[int, int, int]):
    if backend == "fast":
        from .coco_fast import FastCOCOeval

        return FastCOCOeval(gt, dets, iou_type, max_dets=max_dets).run()
    coco_cls, eval_cls = _backend_classes(backend)
    with _quiet():
        if backend == "faster_coco_eval":
            coco_gt = coco_cls(copy.deepcopy(gt), print_function=lambda *a, **k: None)
        else:
            coco_gt = coco_cls()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        kwargs = {"print_function": lambda *a, **k: None} if backend == "faster_coco_eval" else {}
        evaluator = eval_cls(coco_gt, coco_dt, iou_type, **kwargs)
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _refuse_ids_the_backend_changes(gt: Mapping[str, Any], backend: str, source: str) -> None:
    """COCO ids are any JSON ints; "fast" ranks them (coco_fast.py) and is exact for all of them. The other
    backends are not, so the ids they would change are refused naming the id (issue 21):
      pycocotools: COCOeval.evaluate runs np.unique over the image and category ids; all below 2**63 (int64), all
        in [0, 2**64) (uint64) or any from 2**64 on (Python ints) stay exact, but a mix across 2**63 (7 and
        2**63 + 2, or -1 and 2**63) becomes float64, where ids a few apart merge and their images drop out silently;
      faster_coco_eval (C++) holds ids as doubles: beyond 2**53 two ids can become one, and from 2**63 on it fails
        inside its evaluation with a RuntimeError."""
    if backend == "pycocotools":
        for kind in ("images", "categories"):
            ids = [record["id"] for record in gt[kind]]
            kept = np.unique(ids) if ids else np.zeros(0, dtype=np.int64)
            if kept.dtype.kind == "f":
                for value in ids:
                    if int(float(value)) != value:
                        raise CocoEvalError(f"{source}: {kind[:-1]} id {value} would become {float(value):.17g} "
                                            f"inside pycocotools (numpy makes floats of ids on both sides of "
                                            f"2**63); use --backend fast, exact for any int id")
    elif backend == "faster_coco_eval":
        for kind in ("images", "categories", "annotations"):
            for index, record in enumerate(gt[kind]):
                for key in ("id", "image_id", "category_id"):
                    value = record.get(key)
                    if isinstance(value, int) and abs(value) > 2**53:
                        raise CocoEvalError(f"{source}: {kind[:-1]} #{index}: {key} {value} is beyond 2**53, which "
                                            f"faster_coco_eval cannot hold exactly; use --backend fast or pycocotools")


def per_category_ap(evaluator, iou: Optional[float] = None) -> Dict[int, float]:
    """AP per category from COCOeval.eval["precision"], -1 if undefined (no ground truth of that category).

    detectron2's COCOEvaluator._derive_coco_results: precision[:, :, k, 0, -1] (every IoU threshold, area range 0 =
    "all", the last maxDets), mean of the entries > -1. iou=0.5 takes only that threshold's row (AP50 per category).
    """
    precision = np.asarray(evaluator.eval["precision"])  # [T iou, R recall, K categories, A areas, M max dets]
    if iou is not None:
        rows = np.flatnonzero(np.isclose(np.asarray(evaluator.params.iouThrs), iou))
        if rows.size != 1:
            raise CocoEvalError(f"IoU threshold {iou} is not among COCOeval's {list(evaluator.params.iouThrs)}")
        precision = precision[rows]
    result = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        result[int(cat_id)] = float(values.mean()) if values.size else -1.0
    return result


def evaluate_coco(
    gt: GroundTruth,
    detections: Detections,
    *,
    iou_types: Sequence[str] = ("bbox",),
    backend: str = "auto",
    max_dets: Sequence[int] = DEFAULT_MAX_DETS,
    gt_source: str = "",
) -> Dict[str, CocoStats]:
    """COCO metrics of `detections` against `gt` (path, dict or COCO object) for each iou type ("bbox", "segm").

    Returns {iou_type: CocoStats}; stats are the values of COCOeval.stats under STAT_NAMES. max_dets: COCOeval's
    maxDets (see the module docstring). Both inputs are type-checked first (data/coco_format.py); gt_source names an
    in-memory ground truth in those errors (a path names itself).
    """
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise CocoEvalError(f"unknown iou type(s) {unknown or list(iou_types)}; available: {', '.join(IOU_TYPES)}")
    backend = resolve_backend(backend)
    max_dets = check_max_dets(max_dets)
    gt_dict = _gt_dict(gt)
    path_like = (str, os.PathLike)
    gt_name = str(gt) if isinstance(gt, path_like) else gt_source or "ground truth"
    check_ground_truth(gt_dict, source=gt_name, iou_types=iou_types)
    _refuse_ids_the_backend_changes(gt_dict, backend, gt_name)
    dets = _dt_list(detections)
    check_detections(gt_dict, dets, iou_types,
                     source=str(detections) if isinstance(detections, path_like) else "detections")
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt_dict["categories"]}
    results = {}
    for iou_type in iou_types:
        if iou_type == "segm":
            typed = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
        else:
            typed = [dict(d) for d in dets]  # loadRes writes area / id into each result
        evaluator = _run(gt_dict, typed, iou_type, backend, max_dets)
        stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)])}
        results[iou_type] = CocoStats(iou_type=iou_type, stats=stats, per_category=per_category_ap(evaluator),
                                      category_names=names, backend=backend,
                                      per_category_ap50=per_category_ap(evaluator, iou=0.5))
    return results


def format_stats(stats: Mapping[str, float], max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> str:
    """The 12 stats as COCOeval.summarize() names them (with the maxDets they were measured at), one per line."""
    few, some, most = check_max_dets(max_dets)
    rows = {"AP": ("AP", "0.50:0.95", "all", most), "AP50": ("AP", "0.50     ", "all", most),
            "AP75": ("AP", "0.75     ", "all", most), "APs": ("AP", "0.50:0.95", "small", most),
            "APm": ("AP", "0.50:0.95", "medium", most), "APl": ("AP", "0.50:0.95", "large", most),
            "AR1": ("AR", "0.50:0.95", "all", few), "AR10": ("AR", "0.50:0.95", "all", some),
            "AR100": ("AR", "0.50:0.95", "all", most), "ARs": ("AR", "0.50:0.95", "small", most),
            "ARm": ("AR", "0.50:0.95", "medium", most), "ARl": ("AR", "0.50:0.95", "large", most)}
    return "\n".join(f"{name:>5}  {kind} @[IoU={iou} | area={area:>6} | maxDets={dets:>3}] = {stats[name]:.3f}"
                     for name, (kind, iou, area, dets) in rows.items())
