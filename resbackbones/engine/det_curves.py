"""Detection training curves: loss terms vs iteration (left) and COCO AP vs iteration (right), one PNG."""
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

from .metrics_log import plot_panels

LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


def plot_det_curves(rows: List[Dict], path: os.PathLike, *, title: str = "") -> Optional[Path]:
    """rows: metrics rows with "iter" and loss keys (training rows) or "<iou>_AP" keys (eval rows)."""
    train = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if any(k.endswith("_AP") and r.get(k) is not None for k in r)]
    if not train and not evals:
        return None

    def draw_loss(ax_loss):
        for key in LOSS_KEYS:
            points = [(r["iter"], r[key]) for r in train if r.get(key) is not None and math.isfinite(r[key])]
            if points:
                ax_loss.plot(*zip(*points), linewidth=2.0 if key == "loss" else 1.0, label=key)
        ax_loss.set_xlabel("iteration")
        ax_loss.set_ylabel("loss")
        ax_loss.set_yscale("log")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(fontsize=7)

    def draw_ap(ax_ap):
        for key in ("bbox_AP", "segm_AP", "bbox_AP50", "segm_AP50"):
            points = [(r["iter"], r[key]) for r in evals if r.get(key) is not None]
            if points:
                ax_ap.plot(*zip(*points), "o-" if key.endswith("_AP") else "o--", label=key)
        ax_ap.axhline(0.5, color="gray", linewidth=0.6, linestyle=":")
        ax_ap.set_xlabel("iteration")
        ax_ap.set_ylabel("COCO AP")
        ax_ap.set_ylim(0, 1)
        ax_ap.grid(alpha=0.3)
        if evals:
            ax_ap.legend(fontsize=7)

    return plot_panels(path, [draw_loss, draw_ap], title=title, dpi=100)
