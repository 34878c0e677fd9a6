"""What tools/train_det.py keeps of its evaluations, beside eval.json (detectron2's habits):

    OUTPUT/inference/coco_instances_results.json   the detections the final evaluation scored (COCO results json,
                                                   detectron2's name; COCO.loadRes reads it)
    OUTPUT/checkpoints/best.pt                     the checkpoint of the best AP seen by the periodic evaluations
                                                   (train.eval_period > 0) and the final one
    eval.json "per_category"                       {iou type: {category name: {"id", "AP", "AP50"}}}

AP everywhere is COCOeval's fraction (0-1). best.pt is chosen by the first evaluated iou type's AP (test.iou_types,
default bbox, also for mask models): its name, value and iteration are in the checkpoint ("best_metric",
"best_metric_name", "best_iteration": the state of engine.hooks.BestCheckpointer, the one tracker of both trainers)
and in the log line.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional

from ..evaluation.coco import per_category_table
from .checkpoint import BEST, CHECKPOINTS

if TYPE_CHECKING:
    from .checkpoint import CheckpointManager

RESULTS_FILE = Path("inference") / "coco_instances_results.json"


def best_line(best: "CheckpointManager", iou_type: str) -> str:
    """The log line of a new best.pt (best: the run's engine.checkpoint.CheckpointManager)."""
    return (f"best {iou_type} AP so far: {best.best:.4f} (fraction 0-1) at iteration {best.best_iteration}: saved "
            f"{best.folder / BEST} (best.pt is chosen by the first evaluated iou type's AP, {iou_type})")


def eval_summary(trainer, result: Mapping[str, Any], early: Optional[Dict[str, Any]], *, final: bool) -> Dict:
    """eval.json: the evaluation, where the run stands (iteration, train_seconds), what is not final about it
    (stopped_early), the config changes of its resumes; with `final` the detections file and the best so far."""
    summary = dict(result, iteration=trainer.iter, train_seconds=round(trainer.train_seconds, 1))
    if early:  # a resumable run stopped before solver.max_iter: these numbers are not the run's final ones
        summary["stopped_early"] = early
    if trainer.config_changes:
        summary["config_changes"] = [c.to_dict() for c in trainer.config_changes]
    if final:
        summary["coco_results"] = str(RESULTS_FILE)
        tracker = trainer.best.tracker
        if tracker.best is not None:
            summary["best"] = {"checkpoint": f"{CHECKPOINTS}/{BEST}", **tracker.state()}
    return summary


def final_report(result: Mapping[str, Any], iou_types: Iterable[str]) -> str:
    """The per-category tables of a train_det evaluation (AP, AP50 as fractions 0-1), one block per iou type."""

    blocks = []
    for t in iou_types:
        report = (result.get("per_category") or {}).get(t)
        if report:
            blocks.append(f"per-category {t} AP (COCO AP@[.5:.95] and AP@.5, fractions 0-1):\n"
                          + per_category_table(report))
    return "\n".join(blocks)
