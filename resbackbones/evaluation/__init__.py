"""Evaluation: classification top-1/top-5 here; COCO detection metrics live in evaluation/coco.py (pycocotools)."""
from .classification import accuracy, correct_counts, evaluate_classifier, ten_crop

__all__ = ["accuracy", "correct_counts", "evaluate_classifier", "ten_crop"]
