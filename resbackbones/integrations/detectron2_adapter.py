"""The detectron2 Backbone around one of ours (ResBackbone) and the preprocessing conventions of a built detectron2
model using it (model_conventions); re-exported by integrations/detectron2.py, the bridge's entry point."""
from typing import Dict, Optional

import torch
from detectron2.layers import ShapeSpec as D2ShapeSpec
from detectron2.modeling import Backbone as D2Backbone

from ..backbones import Backbone, build_backbone
from .detectron2_weights import Conventions


# -- the adapter --------------------------------------------------------------------------------------------------
class ResBackbone(D2Backbone):
    """A detectron2 Backbone around one of ours: images [N, C, H, W] -> {name: [N, C_k, H / s_k, W / s_k]}.

    The stages of `backbone` are registered directly on this module, so parameter names are detectron2's
    (`stem.conv1.weight`, `res2.0.conv1.norm.running_mean`, VGG: `conv1.conv1_1.weight`); the wrapped module
    still runs the forward (out_features, activation checkpointing, norm_eval).
    output_shape() is in detectron2's ShapeSpec(channels=, stride=).
    """

    def __init__(self, backbone: Backbone, *, arch: Optional[str] = None):
        super().__init__()
        self.arch = arch  # registered name, recorded in exported weights
        if not isinstance(backbone, Backbone):
            raise TypeError(f"ResBackbone wraps a resbackbones Backbone, got {type(backbone).__name__}")
        # Kept out of _modules: the stages below are the registered children (detectron2's names);
        # registering the wrapper too would duplicate every parameter under `stages.`.
        self.__dict__["body"] = backbone
        for name, stage in backbone.stages.items():
            self.add_module(name, stage)
        self._out_features = backbone.out_features
        self._out_feature_strides = {k: s.stride for k, s in backbone.output_shape().items()}
        self._out_feature_channels = {k: s.channels for k, s in backbone.output_shape().items()}

    @classmethod
    def build(cls, *, name: str, **options) -> "ResBackbone":
        """rb.build_backbone(name, **options) wrapped for detectron2 (the callable LazyConfigs use)."""
        return cls(build_backbone(name, **options), arch=name)

    @property
    def stride_in_1x1(self) -> Optional[bool]:
        return getattr(self.body, "stride_in_1x1", None)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResBackbone takes [N, C, H, W] images, got shape {tuple(x.shape)}")
        return self.body(x)

    def train(self, mode: bool = True) -> "ResBackbone":
        super().train(mode)
        self.body.train(mode)  # the wrapped module's own train() re-applies norm_eval
        return self

    def output_shape(self) -> Dict[str, D2ShapeSpec]:
        return {k: D2ShapeSpec(channels=s.channels, stride=s.stride) for k, s in self.body.output_shape().items()}

    @property
    def size_divisibility(self) -> int:
        return self.body.size_divisibility


def model_conventions(model: torch.nn.Module) -> Conventions:
    """Conventions of a built detectron2 meta-architecture (GeneralizedRCNN, RetinaNet) using our backbone."""
    adapters = [m for m in model.modules() if isinstance(m, ResBackbone)]
    return Conventions(
        input_format=getattr(model, "input_format", None),
        pixel_mean=tuple(model.pixel_mean.flatten().tolist()) if hasattr(model, "pixel_mean") else None,
        pixel_std=tuple(model.pixel_std.flatten().tolist()) if hasattr(model, "pixel_std") else None,
        stride_in_1x1=adapters[0].stride_in_1x1 if adapters else None,
    )


# -- builders -------------------------------------------------------------------------------------------------
