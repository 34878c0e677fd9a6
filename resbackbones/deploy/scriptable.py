"""A detector from build_detector rewritten with torchvision's scriptable modules, for TorchScript / ONNX export.

The library's detector uses modules that TorchScript cannot compile or that only matter for training speed:
FP32* heads (float32 outputs under autocast; without autocast they equal torchvision's), the sparse CPU RoIAlign
(torchvision's op under scripting anyway), DetectionTransform (BGR flip + channels_last batch via super()), and
FPN / BackboneWithFPN (name mapping and python-side ShapeSpecs). deployable(model) returns a copy where each is
replaced by torchvision's own class or a small scriptable twin with the same parameters; in float32 its outputs
equal the eager model's up to float rounding (the RoIAlign summation order).
"""
import copy
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

from ..detection.fp32_outputs import FP32AnchorGenerator, FP32BoxPredictor, FP32OutputMaskPredictor, FP32OutputRPNHead
from ..detection.roi_align import FastMultiScaleRoIAlign
from ..detection.transform import DetectionTransform
from ..necks.fpn import FPN, BackboneWithFPN

# Subclasses that only change dtypes under autocast or the CPU kernel: their torchvision base computes the same.
_AS_BASE = {FP32AnchorGenerator: AnchorGenerator, FP32OutputRPNHead: RPNHead, FP32BoxPredictor: FastRCNNPredictor,
            FP32OutputMaskPredictor: MaskRCNNPredictor, FastMultiScaleRoIAlign: MultiScaleRoIAlign}


class ScriptableTransform(GeneralizedRCNNTransform):
    """DetectionTransform without super(): resize, (BGR flip,) normalise, pad to a batch, laid out NHWC where the
    eager model's is (channels_last): the convolutions then run the same kernels as in eager and give the same
    values bit for bit (NCHW rounds differently: on DSB2018 one nucleus mask of 2474 came out at IoU 0.88)."""

    bgr: bool
    channels_last: bool

    def resize(self, image: Tensor,
               target: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        """Inference resize with the eager model's scale. Scripted, torchvision computes the scale in float32, which
        can floor a side one pixel short of eager's float64 (a 586 px side at min_size 128: 586 * float32(128 / 586)
        = 127.99999 -> 127 px, not 128), and the detections then differ; here it is float64 (TorchScript's float),
        as in eager. A fixed size keeps torchvision's resize (no scale to round)."""
        if self.training or target is not None:
            raise RuntimeError("the exported detector runs inference only: no targets, not in training mode")
        if self.fixed_size is not None:
            return _resize_image_and_masks(image, self.min_size[-1], self.max_size, target, self.fixed_size)
        height, width = image.shape[-2], image.shape[-1]
        size = float(self.min_size[-1])
        scale = min(size / float(min(height, width)), float(self.max_size) / float(max(height, width)))
        image = torch.nn.functional.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        """torchvision's batch_images (zero padding to a multiple of size_divisible), then the eager layout."""
        shape = [len(images), 0, 0, 0]
        for image in images:
            for axis in range(3):
                shape[axis + 1] = max(shape[axis + 1], int(image.shape[axis]))
        stride = float(size_divisible)
        shape[2] = int(math.ceil(float(shape[2]) / stride) * stride)
        shape[3] = int(math.ceil(float(shape[3]) / stride) * stride)
        batch = images[0].new_full(shape, 0)
        for i in range(len(images)):
            image = images[i]
            batch[i, :image.shape[0], :image.shape[1], :image.shape[2]].copy_(image)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

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
            module.channels_last = bool(getattr(module, "channels_last", False))
    if isinstance(model.backbone, BackboneWithFPN):
        model.backbone = ScriptableBackboneWithFPN(model.backbone)
    return model
