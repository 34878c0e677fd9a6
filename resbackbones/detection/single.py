"""One-feature-map layouts: VGG-16 conv5_3 (Ren et al. 2015) and the trunk of the C4 layout (res4)."""
from typing import Dict

import torch
from torch import nn

from ..layers import ShapeSpec


class SingleFeature(nn.Module):
    """backbone -> one named feature map, as a feature producer for torchvision's detection heads.

    forward: images [N, 3, H, W] -> {feature: [N, C, H / stride, W / stride]}. Attributes: body (the Backbone),
    out_channels (C). Parameter names body.* match BackboneWithFPN's, so backbone weights load the same way.
    """

    def __init__(self, *, backbone: nn.Module, feature: str):
        super().__init__()
        produced = backbone.output_shape()
        if feature not in produced:
            raise ValueError(f"backbone does not return feature {feature!r}; it returns {list(produced)}")
        self.body = backbone
        self.feature = feature
        self.out_channels = produced[feature].channels

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {self.feature: self.body.output_shape()[self.feature]}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.feature: self.body(images)[self.feature]}
