"""Detectors: Faster / Mask R-CNN over any backbone (FPN, C4 or one feature map) with torchvision's heads."""
from .backbone_weights import load_backbone_weights, to_backbone_state
from .builder import build_detector
from .config import (
    AnchorConfig,
    BackboneConfig,
    BoxHeadConfig,
    DetectorConfig,
    FPNConfig,
    InputConfig,
    MaskHeadConfig,
    RoIHeadsConfig,
    RPNConfig,
    c4_defaults,
    vgg16_defaults,
)

__all__ = [
    "AnchorConfig", "BackboneConfig", "BoxHeadConfig", "DetectorConfig", "FPNConfig", "InputConfig",
    "MaskHeadConfig", "RPNConfig", "RoIHeadsConfig", "build_detector", "c4_defaults", "load_backbone_weights",
    "to_backbone_state", "vgg16_defaults",
]
