"""resbackbones: exact ResNet backbones (and plain / CIFAR / VGG twins) for detection and segmentation.

    import resbackbones as rb
    bb = rb.build_backbone("resnet50", out_features=("res2", "res3", "res4", "res5"), norm="FrozenBN", freeze_at=2)
    bb(images)           # {"res2": [N, 256, H/4, W/4], ..., "res5": [N, 2048, H/32, W/32]}
    bb.output_shape()    # {"res2": ShapeSpec(channels=256, stride=4), ...}
"""
import os

# albumentations checks PyPI for a newer version in a thread at every import (a network attempt on every run, even
# with RESBACKBONES_OFFLINE=1) unless NO_ALBUMENTATIONS_UPDATE is set. Every import of albumentations in this
# package (data/cls_transforms.py, data/det_transforms.py, data/seeding.py) comes after this file runs, so this is
# the one place; setdefault keeps a user's own value (issue 21).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from . import weights  # noqa: E402
from .backbones import Backbone, build_backbone, build_classifier, list_backbones  # noqa: E402
from .layers import ShapeSpec  # noqa: E402
from .inference import optimize_for_inference  # noqa: F401,E402  (BN folded, channels_last, bf16/fp16)
from .detection import build_detector  # noqa: F401,E402  (Faster / Mask R-CNN over backbone + FPN)

__version__ = "0.1.0"

__all__ = ["Backbone", "ShapeSpec", "build_backbone", "build_classifier", "list_backbones", "weights"]
