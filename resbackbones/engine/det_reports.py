"""What tools/train_det.py keeps of its evaluations, beside eval.json (detectron2's habits):

    OUTPUT/inference/coco_instances_results.json   the detections the final evaluation scored (COCO results json,
                                                   detectron2's name; COCO.loadRes reads it)
    OUTPUT/checkpoints/best.pt                     the checkpoint of the best AP seen by the periodic evaluations
                                                   (train.eval_period > 0) and the final one
    eval.json "per_category"                       {iou type: {category name: {"id", "AP", "AP50"}}}

AP everywhere is COCOeval's fraction (0-1). best.pt is chosen by the first evaluated iou type's AP (test.iou_types,
default bbox, also for mask models): its name, value and iteration are in the checkpoint ("best_metric",
"best_metric_name", "best_iteration": engine.checkpoint.CheckpointManager, the one tracker of both trainers) and in
the log line.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .checkpoint import BEST

if TYPE_CHECKING:
    from .checkpoint import CheckpointManager

RESULTS_FILE = Path("inference") / "coco_instances_results.json"


def best_line(best: "CheckpointManager", iou_type: str) -> str:
    """The log line of a new best.pt (best: the run's engine.checkpoint.CheckpointManager)."""
    return (f"best {iou_type} AP so far: {best.best:.4f} (fraction 0-1) at iteration {best.best_iteration}: saved "
            f"{best.folder / BEST} (best.pt is chosen by the first evaluated iou type's AP, {iou_type})")


def final_report(result: Mapping[str, Any], iou_types: Iterable[str]) -> str:
    """The per-category tables of a train_det evaluation (AP, AP50 as fractions 0-1), one block per iou type."""
    from ..evaluation.coco import per_category_table

    blocks = []
    for t in iou_types:
        report = (result.get("per_category") or {}).get(t)
        if report:
            blocks.append(f"per-category {t} AP (COCO AP@[.5:.95] and AP@.5, fractions 0-1):\n"
                          + per_category_table(report))
    return "\n".join(blocks)
