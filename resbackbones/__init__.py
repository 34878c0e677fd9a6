"""resbackbones: exact ResNet backbones (and plain / CIFAR / VGG twins) for detection and segmentation.

    import resbackbones as rb
    bb = rb.build_backbone("resnet50", out_features=("res2", "res3", "res4", "res5"), norm="FrozenBN", freeze_at=2)
    bb(images)           # {"res2": [N, 256, H/4, W/4], ..., "res5": [N, 2048, H/32, W/32]}
    bb.output_shape()    # {"res2": ShapeSpec(channels=256, stride=4), ...}
"""
from . import weights
from .backbones import Backbone, build_backbone, build_classifier, list_backbones
from .layers import ShapeSpec
from .inference import optimize_for_inference  # noqa: F401  (BN folded, channels_last, bf16/fp16)
from .detection import build_detector  # noqa: F401  (Faster / Mask R-CNN over backbone + FPN)

__version__ = "0.1.0"

__all__ = ["Backbone", "ShapeSpec", "build_backbone", "build_classifier", "list_backbones", "weights"]
