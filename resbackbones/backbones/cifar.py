"""CIFAR ResNets of depth 6n+2 and their plain twins (He et al. 2015, section 4.2).

Stages: stem (conv 3x3, 16 channels, + norm + ReLU; stride 1), res2/res3/res4 with n BasicBlocks each, widths
16/32/64, strides 1/2/4. Shortcut option A (zero-padding identity, parameter-free) by default, as in the paper's
CIFAR experiments and in akamaster's published checkpoints; "B"/"C" are selectable. Parameter names:
`stages.stem.conv1.*`, `stages.res2.0.conv1.weight`, `stages.res2.0.conv1.norm.*`, head `fc`.
"""
from collections import OrderedDict
from typing import Dict, Optional, Sequence

from torch import nn

from ..layers import Conv2d, ShapeSpec, get_norm
from ..layers.blocks import SHORTCUT_CHOICES, BasicBlock
from ..layers.norm import NormSpec
from .base import Backbone
from .registry import register_backbone

STAGE_NAMES = ("res2", "res3", "res4")
STAGE_WIDTHS = (16, 32, 64)
RESNET_DEPTHS = (20, 32, 44, 56, 110, 1202)
PLAIN_DEPTHS = (20, 32, 44, 56, 110)


def blocks_per_stage(depth: int) -> int:
    """n of a depth-(6n+2) CIFAR net; ValueError for any other depth."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...), got {depth!r}"
        )
    return (depth - 2) // 6


class CifarStem(nn.Module):
    """conv 3x3/1 (+ norm + ReLU): [N, C_in, H, W] -> [N, 16, H, W]."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 16, norm: NormSpec = "BN"):
        super().__init__()
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=norm in (None, "", "none"),
            norm=get_norm(norm, out_channels), activation=nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.conv1(x)


class CifarResNet(Backbone):
    """CIFAR ResNet / plain net: images [N, 3, H, W] -> {"stem": [N, 16, H, W], "res2": [N, 16, H, W],
    "res3": [N, 32, H/2, W/2], "res4": [N, 64, H/4, W/4]} (the requested subset; default res4).

    depth: 6n+2 (20, 32, 44, 56, 110, 1202, ...). residual=False: plain twin (no shortcuts, Fig. 6 left).
    shortcut: "A" (default; zero-padding, no parameters), "B" (projection when the shape changes), "C" (always).
    norm: get_norm name ("BN" default). widths: channels of res2/res3/res4 (16, 32, 64 in the paper).
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        residual: bool = True,
        shortcut: str = "A",
        norm: NormSpec = "BN",
        widths: Sequence[int] = STAGE_WIDTHS,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
    ):
        super().__init__()
        n = blocks_per_stage(depth)
        if shortcut not in SHORTCUT_CHOICES:
            raise ValueError(f"unknown shortcut {shortcut!r}; available: {', '.join(SHORTCUT_CHOICES)}")
        if len(widths) != 3 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be 3 positive ints (res2, res3, res4), got {tuple(widths)}")
        if zero_init_residual and not residual:
            raise ValueError("zero_init_residual=True would zero every block of a plain net; use it with residual=True")
        self.depth = depth
        self.residual = residual
        stages: "OrderedDict[str, nn.Module]" = OrderedDict()
        shapes: Dict[str, ShapeSpec] = {}
        stages["stem"] = CifarStem(in_channels=in_channels, out_channels=widths[0], norm=norm)
        shapes["stem"] = ShapeSpec(widths[0], 1)
        channels, stride = widths[0], 1
        for index, (name, width) in enumerate(zip(STAGE_NAMES, widths)):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(
                    in_channels=channels, out_channels=width, stride=first_stride if i == 0 else 1, norm=norm,
                    residual=residual, shortcut=shortcut,
                ))
                channels = width
            stride *= first_stride
            stages[name] = nn.Sequential(*blocks)
            shapes[name] = ShapeSpec(width, stride)
        self._init_weights(stages, zero_init_residual=zero_init_residual)
        self._init_stages(stages, shapes, out_features=out_features, freeze_at=freeze_at, norm_eval=norm_eval,
                          checkpoint_stages=checkpoint_stages)

    @staticmethod
    def _init_weights(stages: "OrderedDict[str, nn.Module]", *, zero_init_residual: bool) -> None:
        # He et al. (2015) / akamaster: kaiming_normal (fan_in) convs, BN at (1, 0).
        for stage in stages.values():
            for module in stage.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                if zero_init_residual and isinstance(module, BasicBlock):
                    module.zero_init_last_norm()

    def build_classifier_head(self, num_classes: int) -> nn.Module:
        """res4 [N, 64, h, w] -> global avg pool -> Linear "fc" -> logits [N, num_classes]."""
        last = self.stage_names[-1]
        channels = self.stage_shapes()[last].channels
        head = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=nn.Linear(channels, num_classes)
        ))
        nn.init.kaiming_normal_(head.fc.weight)
        return head


def _builder(default_depth: Optional[int], residual: bool):
    def build(
        *,
        depth: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        norm: NormSpec = "BN",
        shortcut: str = "A",
        widths: Sequence[int] = STAGE_WIDTHS,
        zero_init_residual: bool = False,
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
        in_channels: int = 3,
    ) -> CifarResNet:
        if default_depth is not None and depth is not None and depth != default_depth:
            kind = "cifar_resnet" if residual else "cifar_plain"
            raise ValueError(f"{kind}{default_depth} has depth {default_depth}; for depth={depth} build {kind!r}")
        return CifarResNet(
            depth=depth if depth is not None else (default_depth or 20), residual=residual, shortcut=shortcut,
            norm=norm, widths=widths, in_channels=in_channels, zero_init_residual=zero_init_residual,
            out_features=out_features, freeze_at=freeze_at, norm_eval=norm_eval, checkpoint_stages=checkpoint_stages,
        )

    return build


register_backbone("cifar_resnet", family="cifar_resnet",
                  description="CIFAR ResNet of any depth 6n+2 (depth=..., default 20)")(_builder(None, True))
register_backbone("cifar_plain", family="cifar_plain",
                  description="plain CIFAR net of any depth 6n+2 (depth=..., default 20)")(_builder(None, False))
for _depth in RESNET_DEPTHS:
    register_backbone(f"cifar_resnet{_depth}", family="cifar_resnet",
                      description=f"CIFAR ResNet-{_depth} (He et al. 2015 sec. 4.2), option-A shortcuts")(
        _builder(_depth, True))
for _depth in PLAIN_DEPTHS:
    register_backbone(f"cifar_plain{_depth}", family="cifar_plain",
                      description=f"plain CIFAR net with {_depth} layers (no shortcuts)")(_builder(_depth, False))
