"""Feature Pyramid Network over any backbone's output_shape(), with torchvision's parameter layout.

The math is torchvision.ops.FeaturePyramidNetwork (so torchvision FPN weights copy over key for key); this module
adds what torchvision lacks: wiring from ShapeSpecs, a stride check, detectron2-style output names p<log2 stride>
and an output_shape() for the heads.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..layers import ShapeSpec, get_norm

TOP_BLOCKS = ("maxpool", "p6p7", "p6p7_c5", "none")


class FPN(FeaturePyramidNetwork):
    """Top-down pyramid with lateral 1x1 convs, sum fusion and 3x3 output convs (Lin et al. 2017).

    forward: {in_feature: [N, C_i, H / s_i, W / s_i]} -> {"p<log2 s_i>": [N, out_channels, H / s_i, W / s_i]},
    plus the top block's extra levels:
      "maxpool"  p<k+1> = P_k subsampled by 2 (Faster/Mask R-CNN's RPN level, torchvision's LastLevelMaxPool);
      "p6p7"     p<k+1>, p<k+2> = stride-2 3x3 convs on P_k (RetinaNet, torchvision's LastLevelP6P7(C, C));
      "p6p7_c5"  the same convs applied to the last backbone feature C_k (RetinaNet paper / detectron2);
      "none"     no extra level.
    Parameter names are torchvision's (inner_blocks.i.0.weight, layer_blocks.i.0.weight, extra_blocks.p6.weight).
    """

    def __init__(
        self,
        *,
        input_shapes: Mapping[str, ShapeSpec],
        in_features: Optional[Sequence[str]] = None,
        out_channels: int = 256,
        top_block: str = "maxpool",
        norm: Optional[str] = None,
    ):
        in_features = list(in_features) if in_features is not None else list(input_shapes)
        shapes = _check_inputs(input_shapes, in_features)
        if top_block not in TOP_BLOCKS:
            raise ValueError(f"FPN: unknown top_block {top_block!r}; available: {', '.join(TOP_BLOCKS)}")
        norm_layer = None
        if norm not in (None, "", "none"):
            get_norm(norm, out_channels)  # validates the name now, with the list of valid norms
            norm_layer = lambda channels: get_norm(norm, channels)  # noqa: E731
        super().__init__(
            in_channels_list=[s.channels for s in shapes],
            out_channels=out_channels,
            extra_blocks=_top_block(top_block, shapes[-1].channels, out_channels),
            norm_layer=norm_layer,
        )
        self.in_features = in_features
        strides = [s.stride for s in shapes]
        num_extra = {"maxpool": 1, "p6p7": 2, "p6p7_c5": 2, "none": 0}[top_block]
        strides += [strides[-1] * 2 ** (i + 1) for i in range(num_extra)]
        self._out_shapes: Dict[str, ShapeSpec] = OrderedDict(
            (f"p{int(math.log2(s))}", ShapeSpec(out_channels, s)) for s in strides
        )
        self.out_channels = out_channels
        self.top_block = top_block

    @property
    def out_features(self) -> List[str]:
        return list(self._out_shapes)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """{"p2": ShapeSpec(out_channels, 4), ...} in increasing stride."""
        return dict(self._out_shapes)

    def forward(self, features: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"FPN expects features {self.in_features}; missing {missing} (got {list(features)})")
        outputs = super().forward(OrderedDict((f, features[f]) for f in self.in_features))
        return OrderedDict(zip(self._out_shapes, outputs.values()))


def _check_inputs(input_shapes: Mapping[str, ShapeSpec], in_features: List[str]) -> List[ShapeSpec]:
    unknown = [f for f in in_features if f not in input_shapes]
    if unknown or not in_features:
        raise ValueError(f"FPN: unknown in_features {unknown or in_features}; available: {', '.join(input_shapes)}")
    shapes = [input_shapes[f] for f in in_features]
    for name, shape in zip(in_features, shapes):
        if shape.stride < 1 or shape.stride & (shape.stride - 1):
            raise ValueError(f"FPN: feature {name!r} has stride {shape.stride}; FPN levels need power-of-two strides")
    for (name_a, a), (name_b, b) in zip(zip(in_features, shapes), zip(in_features[1:], shapes[1:])):
        if b.stride != 2 * a.stride:
            described = ", ".join(f"{n}: stride {s.stride}" for n, s in zip(in_features, shapes))
            raise ValueError(
                f"FPN: strides must double from level to level, but {name_a!r} has stride {a.stride} and "
                f"{name_b!r} has stride {b.stride} ({described})"
            )
    return shapes


def _top_block(top_block: str, last_in_channels: int, out_channels: int) -> Optional[ExtraFPNBlock]:
    if top_block == "maxpool":
        return LastLevelMaxPool()
    if top_block in ("p6p7", "p6p7_c5"):
        from_c5 = top_block == "p6p7_c5"
        block = LastLevelP6P7(last_in_channels if from_c5 else out_channels, out_channels)
        # torchvision decides P5-vs-C5 from the channel counts; the config says it explicitly.
        block.use_P5 = not from_c5
        return block
    return None


class BackboneWithFPN(nn.Module):
    """backbone -> FPN, as one feature producer that torchvision's detection heads accept.

    forward: images [N, 3, H, W] -> {"p2": [N, C, H/4, W/4], ..., "p6": [N, C, H/64, W/64]}.
    Attributes: `body` (the Backbone), `fpn` (FPN), `out_channels` (C, read by torchvision's FasterRCNN).
    Parameter names follow torchvision's BackboneWithFPN (body.*, fpn.*).
    """

    def __init__(self, *, backbone: nn.Module, fpn: FPN):
        super().__init__()
        produced = backbone.output_shape()
        missing = [f for f in fpn.in_features if f not in produced]
        if missing:
            raise ValueError(f"FPN needs backbone features {missing}, but the backbone returns {list(produced)}")
        self.body = backbone
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    @property
    def size_divisibility(self) -> int:
        """The coarsest backbone stride: inputs padded to a multiple of it keep P2..P5 aligned (P6+ just subsample)."""
        return max(s.stride for s in self.body.output_shape().values())

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(self.body(images))
