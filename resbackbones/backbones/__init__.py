"""Feature producers: ResNet / plain / ResNeXt, CIFAR nets, VGG. Each returns {stage: Tensor} + output_shape()."""
from .base import Backbone
from .classifier import Classifier, FeatureClassifier, build_classifier
from .registry import build_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "Classifier",
    "FeatureClassifier",
    "build_backbone",
    "build_classifier",
    "list_backbones",
    "register_backbone",
]
