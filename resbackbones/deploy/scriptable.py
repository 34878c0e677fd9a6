"""A detector from build_detector rewritten with torchvision's scriptable modules, for TorchScript / ONNX export.

The library's detector uses modules that TorchScript cannot compile or that only matter for training speed:
FP32* heads (float32 outputs under autocast; without autocast they equal torchvision's), the sparse CPU RoIAlign
(torchvision's op under scripting anyway), DetectionTransform (BGR flip + channels_last batch via super()), and
FPN / BackboneWithFPN (name mapping and python-side ShapeSpecs). deployable(model) returns a copy where each is
replaced by torchvision's own class or a small scriptable twin with the same parameters; in float32 its outputs
equal the eager model's up to float rounding (the RoIAlign summation order).
"""
import copy
from collections import OrderedDict
from typing import Dict, List

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

from ..detection.fp32_outputs import FP32AnchorGenerator, FP32BoxPredictor, FP32OutputMaskPredictor, FP32OutputRPNHead
from ..detection.roi_align import FastMultiScaleRoIAlign
from ..detection.transform import DetectionTransform
from ..necks.fpn import FPN, BackboneWithFPN

# Subclasses that only change dtypes under autocast or the CPU kernel: their torchvision base computes the same.
_AS_BASE = {FP32AnchorGenerator: AnchorGenerator, FP32OutputRPNHead: RPNHead, FP32BoxPredictor: FastRCNNPredictor,
            FP32OutputMaskPredictor: MaskRCNNPredictor, FastMultiScaleRoIAlign: MultiScaleRoIAlign}


class ScriptableTransform(GeneralizedRCNNTransform):
    """DetectionTransform without super(): resize, (BGR flip,) normalise, pad to a batch (NCHW)."""

    bgr: bool

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {image.dtype}")
        if self.bgr:
            image = image.flip(0)
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]


class ScriptableFPN(nn.Module):
    """FPN: {in_feature: tensor} -> {"p<k>": tensor}, torchvision's FeaturePyramidNetwork inside."""

    def __init__(self, fpn: FPN):
        super().__init__()
        self.in_features: List[str] = list(fpn.in_features)
        self.out_names: List[str] = list(fpn.out_features)
        inner = copy.copy(fpn)
        inner.__class__ = FeaturePyramidNetwork
        self.fpn = inner

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        ordered: Dict[str, Tensor] = OrderedDict()
        for name in self.in_features:
            ordered[name] = x[name]
        outputs = self.fpn(ordered)
        named: Dict[str, Tensor] = OrderedDict()
        for name, value in zip(self.out_names, outputs.values()):
            named[name] = value
        return named


class ScriptableBackboneWithFPN(nn.Module):
    def __init__(self, features: BackboneWithFPN):
        super().__init__()
        self.body = features.body
        self.fpn = ScriptableFPN(features.fpn)
        self.out_channels = features.out_channels

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        return self.fpn(self.body(images))


def deployable(model: nn.Module) -> nn.Module:
    """A copy of a build_detector model (eval mode, CPU tensors kept where they are) that torch.jit.script compiles."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        base = _AS_BASE.get(type(module))
        if base is not None:
            module.__class__ = base
        elif type(module) is DetectionTransform:
            module.__class__ = ScriptableTransform
            module.bgr = module.input_format == "BGR"
    if isinstance(model.backbone, BackboneWithFPN):
        model.backbone = ScriptableBackboneWithFPN(model.backbone)
    return model
