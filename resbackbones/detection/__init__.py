"""Detectors: Faster / Mask R-CNN over any backbone (FPN, C4 or one feature map) with torchvision's heads."""
from ..config.detector import (
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
from .backbone_weights import refuse_untrainable_backbone
from .builder import build_detector

__all__ = [
    "AnchorConfig", "BackboneConfig", "BoxHeadConfig", "DetectorConfig", "FPNConfig", "InputConfig",
    "MaskHeadConfig", "RPNConfig", "RoIHeadsConfig", "build_detector", "c4_defaults", "refuse_untrainable_backbone",
    "vgg16_defaults",
]
