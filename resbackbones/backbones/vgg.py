"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), with or without BN, as backbones with stage outputs.

Stages follow the paper's conv blocks: "conv1".."conv5", where stage k (k > 1) starts with the 2x2 max-pool that
ends block k-1 in torchvision's `features`. So conv5 is conv5_3 at stride 16 with 512 channels, the feature map
Faster R-CNN uses; pool5 lives in the classification head. Parameter names use caffe's layer names
(`stages.conv3.conv3_1.weight`, `...conv3_1.norm.running_mean` for _bn), each conv carrying its norm and ReLU so
BN folding finds them.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..layers import Conv2d, ShapeSpec, get_norm
from ..layers.specs import (VGG_DEPTH_TO_CONVS as DEPTH_TO_CONVS, VGG_STAGE_NAMES as STAGE_NAMES,
                            VGG_STAGE_WIDTHS as STAGE_WIDTHS)
from .base import Backbone
from .registry import register_backbone


class VGG(Backbone):
    """VGG feature extractor: images [N, 3, H, W] -> {"conv1": [N, 64, H, W], ..., "conv5": [N, 512, H/16, W/16]}.

    depth: 11, 13, 16 or 19. norm: "none" (plain VGG) or any get_norm name ("BN" gives torchvision's vgg*_bn).
    out_features: subset of conv1..conv5 (default conv5). freeze_at: 0 = nothing, k = conv1..conv_k.
    classifier_pool: side of the average pool between pool5 and fc6 in build_classifier_head (7: torchvision's, for
      224 px inputs where pool5 is 7x7). Small inputs (CIFAR at 32-64 px: pool5 1x1 or 2x2) want 1: a 7x7 pool would
      copy each pool5 value up to 49 times, and fc6's 49 copies of a weight then learn as one at 49x the lr.
    Convs keep their bias even with BN, as torchvision's do, so converted weights load one to one.
    """

    def __init__(
        self,
        *,
        depth: int = 16,
        norm: Optional[str] = "none",
        in_channels: int = 3,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
        classifier_pool: int = 7,
    ):
        super().__init__()
        if depth not in DEPTH_TO_CONVS:
            raise ValueError(f"VGG: unsupported depth {depth!r}; available: {', '.join(map(str, DEPTH_TO_CONVS))}")
        if not isinstance(classifier_pool, int) or classifier_pool < 1:
            raise ValueError(f"VGG: classifier_pool must be a positive int, got {classifier_pool!r}")
        self.depth, self.classifier_pool = depth, classifier_pool
        stages: "OrderedDict[str, nn.Module]" = OrderedDict()
        shapes: Dict[str, ShapeSpec] = {}
        channels = in_channels
        for index, (name, width, num_convs) in enumerate(zip(STAGE_NAMES, STAGE_WIDTHS, DEPTH_TO_CONVS[depth])):
            layers: List[Tuple[str, nn.Module]] = []
            if index > 0:
                layers.append((f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2)))
            for conv_index in range(1, num_convs + 1):
                conv = Conv2d(
                    channels, width, kernel_size=3, padding=1, bias=True,
                    norm=get_norm(norm, width), activation=nn.ReLU(inplace=True),
                )
                layers.append((f"{name}_{conv_index}", conv))
                channels = width
            stages[name] = nn.Sequential(OrderedDict(layers))
            shapes[name] = ShapeSpec(channels=width, stride=2 ** index)
        self._init_weights(stages)
        self._init_stages(
            stages, shapes, out_features=out_features, freeze_at=freeze_at, norm_eval=norm_eval,
            checkpoint_stages=checkpoint_stages,
        )

    @staticmethod
    def _init_weights(stages: "OrderedDict[str, nn.Module]") -> None:
        # torchvision's VGG init, so randomly initialised models train like theirs.
        for stage in stages.values():
            for module in stage.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)

    @property
    def size_divisibility(self) -> int:
        # Max-pools floor odd sizes; multiples of the last stride keep every stage exactly H / stride.
        return self._stage_shapes[self.stage_names[-1]].stride

    def build_classifier_head(self, num_classes: int, *, dropout: float = 0.5) -> nn.Module:
        """pool5 + AdaptiveAvgPool(7, 7) + torchvision's classifier: conv5 [N, 512, h, w] -> logits [N, num_classes].

        Needs the full backbone (conv5). Layer names fc6/fc7/fc8 are caffe's; weights map from torchvision's
        classifier.0/3/6 (see weights/convert_vgg.py).
        """
        if self.stage_names[-1] != "conv5":
            raise ValueError(f"VGG classifier head needs stage conv5, but the backbone stops at {self.stage_names[-1]}")
        return VGGHead(num_classes=num_classes, dropout=dropout, pool_size=self.classifier_pool)


class VGGHead(nn.Sequential):
    """conv5 [N, 512, h, w] -> pool5 -> [N, 512, p, p] (adaptive avg, p = pool_size, torchvision: 7) -> fc6 4096 ->
    fc7 4096 -> fc8 num_classes."""

    def __init__(self, *, num_classes: int, dropout: float = 0.5, in_channels: int = 512, pool_size: int = 7):
        super().__init__(OrderedDict([
            ("pool5", nn.MaxPool2d(kernel_size=2, stride=2)),
            ("avgpool", nn.AdaptiveAvgPool2d((pool_size, pool_size))),
            ("flatten", nn.Flatten(1)),
            ("fc6", nn.Linear(in_channels * pool_size * pool_size, 4096)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(p=dropout)),
            ("fc7", nn.Linear(4096, 4096)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(p=dropout)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)


def _register(depth: int, batch_norm: bool) -> None:
    name = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    default_norm = "BN" if batch_norm else "none"

    def builder(
        *,
        norm: Optional[str] = default_norm,
        in_channels: int = 3,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
        classifier_pool: int = 7,
    ) -> VGG:
        return VGG(
            depth=depth, norm=norm, in_channels=in_channels, out_features=out_features, freeze_at=freeze_at,
            norm_eval=norm_eval, checkpoint_stages=checkpoint_stages, classifier_pool=classifier_pool,
        )

    builder.__name__ = name
    builder.__doc__ = f"VGG-{depth}{' with BN' if batch_norm else ''}: stages conv1..conv5, strides 1..16"
    register_backbone(name, family="vgg")(builder)


for _depth in DEPTH_TO_CONVS:
    _register(_depth, batch_norm=False)
    _register(_depth, batch_norm=True)
