"""The C4 layout of He et al. 2016 (Sec. A, 'ResNet-101 on COCO'): RPN and RoI pooling on res4 (stride 16);
the res5 stage runs per RoI as the box head, followed by global average pooling."""
from typing import Tuple

from torch import nn

from ..backbones import Backbone
from .single import SingleFeature


def split_res5(backbone: Backbone) -> Tuple[SingleFeature, nn.Module, int]:
    """Cut a ResNet built up to res5 into (res4 feature producer, res5 stage, res5 channels).

    The backbone must have been built with res5 (out_features including it) and its weights loaded before the cut,
    so one classifier export fills both halves. res5's first block has stride 2: 14x14 RoIs come out 7x7.
    """
    if "res5" not in backbone.stages or "res4" not in backbone.stages:
        raise ValueError(f"the C4 layout needs a backbone with res4 and res5 stages; got {backbone.stage_names}")
    res5_channels = backbone.stage_shapes()["res5"].channels
    res5 = backbone.pop_stage("res5")
    backbone.select_out_features(["res4"])
    return SingleFeature(backbone=backbone, feature="res4"), res5, res5_channels
