"""Evaluation: classification top-1/top-5 here; COCO detection metrics live in evaluation/coco.py (pycocotools)."""
from .classification import accuracy, correct_counts, evaluate_classifier, ten_crop
from .coco import STAT_NAMES, CocoEvalError, CocoStats, evaluate_coco, format_stats  # noqa: F401
from .coco_results import category_mapping, to_coco_results  # noqa: F401

__all__ = ["accuracy", "correct_counts", "evaluate_classifier", "ten_crop"]
