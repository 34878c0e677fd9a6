"""Feature producers: ResNet / plain / ResNeXt, CIFAR nets, VGG. Each returns {stage: Tensor} + output_shape()."""
from .base import Backbone
from .classifier import Classifier, FeatureClassifier, build_classifier
from .registry import build_backbone, list_backbones, register_backbone
# Importing the family modules runs their @register_backbone decorators; the registry is complete once this package
# is imported (any `resbackbones.backbones.*` import runs this file first). Order = list_backbones() order (README).
from . import resnet, cifar, vgg  # noqa: F401

__all__ = [
    "Backbone",
    "Classifier",
    "FeatureClassifier",
    "build_backbone",
    "build_classifier",
    "list_backbones",
    "register_backbone",
]
