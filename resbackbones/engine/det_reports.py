"""What tools/train_det.py keeps of its evaluations, beside eval.json (detectron2's habits):

    OUTPUT/inference/coco_instances_results.json   the detections the final evaluation scored (COCO results json,
                                                   detectron2's name; COCO.loadRes reads it)
    OUTPUT/best.pt                                 the checkpoint of the best AP seen by the periodic evaluations
                                                   (train.eval_period > 0) and the final one
    eval.json "per_category"                       {iou type: {category name: {"id", "AP", "AP50"}}}

AP everywhere is COCOeval's fraction (0-1). best.pt is chosen by the first evaluated iou type's AP (test.iou_types,
default bbox, also for mask models): its name, value and iteration are in the checkpoint ("best_metric",
"best_metric_name", "best_iteration", as train_cls's CheckpointManager writes them) and in the log line.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

RESULTS_FILE = Path("inference") / "coco_instances_results.json"


def per_category_without_detections(gt: Mapping[str, Any], iou_types: Sequence[str]) -> Dict[str, Dict]:
    """eval.json's "per_category" when nothing was detected (COCOeval cannot run on an empty result list):
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


class BestTracker:
    """The best value of `<iou type>_AP` so far (higher is better; NaN / missing never wins)."""

    def __init__(self, iou_type: str):
        self.iou_type = iou_type
        self.name = f"{iou_type}_AP"
        self.value: Optional[float] = None
        self.iteration: Optional[int] = None

    def update(self, result: Mapping[str, Any], iteration: int) -> bool:
        value = (result.get(self.iou_type) or {}).get("AP")
        if value is None or value != value or (self.value is not None and value <= self.value):
            return False
        self.value, self.iteration = float(value), int(iteration)
        return True

    def state(self) -> Dict[str, Any]:
        return {"best_metric": self.value, "best_metric_name": self.name, "best_iteration": self.iteration}

    def load(self, state: Mapping[str, Any]) -> None:
        if state.get("best_metric") is not None and state.get("best_metric_name") == self.name:
            self.value, self.iteration = float(state["best_metric"]), state.get("best_iteration")

    def line(self, path: Path) -> str:
        return (f"best {self.iou_type} AP so far: {self.value:.4f} (fraction 0-1) at iteration {self.iteration}: "
                f"saved {path} (best.pt is chosen by the first evaluated iou type's AP, {self.iou_type})")


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
