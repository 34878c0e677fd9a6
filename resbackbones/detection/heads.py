"""RoI poolers and heads that torchvision's RoIHeads accepts but torchvision does not ship for our layouts.

torchvision provides TwoMLPHead, FastRCNNConvFCHead, MaskRCNNHeads and the predictors (used as they are); this file
adds RoIPool behind MultiScaleRoIAlign's interface (Fast/Faster R-CNN VGG-16 papers) and the C4 res5 head.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from ..layers import get_norm
from .roi_align import FastMultiScaleRoIAlign


class RoIPool(MultiScaleRoIAlign):
    """Max RoI pooling (Girshick 2015) of one feature map, with MultiScaleRoIAlign's call signature.

    forward: features {name: [N, C, H / stride, W / stride]}, boxes list of [R_i, 4] xyxy in input pixels
    -> [sum R_i, C, output_size, output_size]. Subclasses MultiScaleRoIAlign because torchvision's FasterRCNN
    type-checks its box_roi_pool.
    """

    def __init__(self, *, featmap_name: str, stride: int, output_size: int = 7):
        super().__init__(featmap_names=[featmap_name], output_size=output_size, sampling_ratio=0)
        self.stride = stride

    def forward(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        feature = x[self.featmap_names[0]]
        if feature.dtype in (torch.bfloat16, torch.float16):
            # torchvision's CPU roi_pool has no bf16 kernel and no autocast rule; a max is exact in float32 and back.
            pooled = roi_pool(feature.float(), [b.float() for b in boxes], self.output_size, 1.0 / self.stride)
            return pooled.to(feature.dtype)
        return roi_pool(feature, boxes, self.output_size, spatial_scale=1.0 / self.stride)


def roi_pooler(*, pooler_type: str, featmap_names: Sequence[str], strides: Sequence[int], output_size: int,
               sampling_ratio: int) -> MultiScaleRoIAlign:
    """RoIAlign over one or several levels (FPN assigns RoIs to levels by size), or RoIPool over one map."""
    if pooler_type == "RoIAlign":
        return FastMultiScaleRoIAlign(featmap_names=list(featmap_names), output_size=output_size,
                                      sampling_ratio=sampling_ratio)
    if pooler_type == "RoIPool":
        if len(featmap_names) != 1:
            raise ValueError(f"RoIPool pools one feature map, got {list(featmap_names)}; use RoIAlign for FPN")
        return RoIPool(featmap_name=featmap_names[0], stride=strides[0], output_size=output_size)
    raise ValueError(f"unknown pooler_type {pooler_type!r}; available: RoIAlign, RoIPool")


class Res5Head(nn.Module):
    """C4 RoI head: pooled res4 RoIs [R, C4, 14, 14] -> res5 stage -> [R, C5, 7, 7] -> (pool) -> [R, C5].

    The same res5 module serves as box head (pool=True) and mask head (pool=False), sharing weights as in
    detectron2's Res5ROIHeads.
    """

    def __init__(self, *, res5: nn.Module, out_channels: int, pool: bool):
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res5(x)
        return x.mean(dim=(2, 3)) if self.pool else x


def _norm_layer(norm: str):
    if norm in (None, "", "none"):
        return None
    get_norm(norm, 32)  # validate the name early, with the list of valid norms
    return lambda channels: get_norm(norm, channels)


def box_head(*, head_type: str, in_channels: int, resolution: int, fc_dim: int, num_conv: int, conv_dim: int,
             norm: str = "", res5: Optional[nn.Module] = None, res5_channels: int = 0) -> Tuple[nn.Module, int]:
    """Build the box head; returns (module mapping pooled RoIs [R, C, res, res] -> [R, D], D)."""
    if head_type == "mlp":
        return TwoMLPHead(in_channels * resolution ** 2, fc_dim), fc_dim
    if head_type == "conv_fc":
        head = FastRCNNConvFCHead((in_channels, resolution, resolution), [conv_dim] * num_conv, [fc_dim],
                                  norm_layer=_norm_layer(norm))
        return head, fc_dim
    if head_type == "res5":
        if res5 is None:
            raise ValueError("box head 'res5' needs the backbone's res5 stage (layout c4)")
        return Res5Head(res5=res5, out_channels=res5_channels, pool=True), res5_channels
    raise ValueError(f"unknown box head type {head_type!r}; available: mlp, conv_fc, res5")


def mask_head(*, in_channels: int, num_conv: int, conv_dim: int, norm: str = "") -> Tuple[nn.Module, int]:
    """torchvision's MaskRCNNHeads: num_conv 3x3 convs of conv_dim (+ ReLU); returns (module, conv_dim)."""
    if num_conv < 1:
        raise ValueError(f"mask head needs num_conv >= 1, got {num_conv}")
    return MaskRCNNHeads(in_channels, [conv_dim] * num_conv, 1, norm_layer=_norm_layer(norm)), conv_dim
