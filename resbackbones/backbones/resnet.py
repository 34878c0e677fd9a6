"""ImageNet ResNets (He et al. 2015), their plain twins, ResNeXt and Wide ResNet, as detectron2-style backbones.

Stages: stem (conv 7x7/2 + norm + ReLU + maxpool 3x3/2: stride 4, 64 channels), res2..res5 (strides 4/8/16/32;
res5 stride 16 when res5_dilation=2). Parameter names: `stages.res2.0.conv1.weight`, `stages.res2.0.conv1.norm.*`,
`stages.res2.0.shortcut.*` (detectron2's names under `stages.`).

Plain nets of any depth: every builder takes `layers=(n2, n3, n4, n5)` to override the number of blocks per stage,
e.g. build_backbone("plain34", layers=(2, 2, 2, 2)) is a plain-18 of BasicBlocks (plain18 itself is registered).
"""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..layers import Conv2d, ShapeSpec, get_norm
from ..layers.blocks import SHORTCUT_CHOICES, BasicBlock, Bottleneck
from ..layers.norm import NormSpec
from .base import Backbone
from .registry import register_backbone

STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_WIDTHS = (64, 128, 256, 512)  # "planes" of torchvision: BasicBlock outputs, Bottleneck 1/4 of its outputs
DEPTH_LAYERS: Dict[int, Tuple[Type[nn.Module], Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class BasicStem(nn.Module):
    """conv 7x7/2 (+ norm + ReLU) then maxpool 3x3/2: [N, C_in, H, W] -> [N, 64, H/4, W/4] (ceil for odd sizes)."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, norm: NormSpec = "BN"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3,
                            bias=norm in (None, "", "none"), norm=get_norm(norm, out_channels),
                            activation=nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))


class ResNet(Backbone):
    """ResNet / plain / ResNeXt backbone: images [N, in_channels, H, W] -> {stage: [N, C, H/stride, W/stride]}.

    block: BasicBlock or Bottleneck; layers: blocks per stage (res2..res5).
    residual=False builds the plain twin (no shortcuts). shortcut: "A" | "B" | "C" (see layers.blocks).
    groups/width_per_group: ResNeXt (32, 4) for 32x4d; Wide ResNet-50-2 is (1, 128).
    stride_in_1x1: stride in the first 1x1 conv (caffe/detectron2) instead of the 3x3 (torchvision).
    res5_dilation: 1 or 2 (2: res5 keeps stride 16 and dilates its 3x3 convs, DeepLab/DC5 style).
    """

    __jit_unused_properties__ = ["size_divisibility"]  # python-side metadata; TorchScript need not compile it

    def __init__(
        self,
        *,
        block: Type[nn.Module],
        layers: Sequence[int],
        in_channels: int = 3,
        norm: NormSpec = "BN",
        residual: bool = True,
        shortcut: str = "B",
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        res5_dilation: int = 1,
        zero_init_residual: bool = False,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
    ):
        super().__init__()
        self._validate(block=block, layers=layers, shortcut=shortcut, res5_dilation=res5_dilation, groups=groups,
                       width_per_group=width_per_group, residual=residual, zero_init_residual=zero_init_residual)
        self.stride_in_1x1 = stride_in_1x1
        self.residual = residual
        stages: "OrderedDict[str, nn.Module]" = OrderedDict()
        shapes: Dict[str, ShapeSpec] = {}
        stages["stem"] = BasicStem(in_channels=in_channels, out_channels=64, norm=norm)
        shapes["stem"] = ShapeSpec(64, 4)
        channels, stride_so_far = 64, 4
        for index, (name, planes, count) in enumerate(zip(STAGE_NAMES, STAGE_WIDTHS, layers)):
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 or dilation > 1 else 2
            out_channels = planes * block.expansion
            blocks = []
            for i in range(count):
                kwargs = dict(in_channels=channels, out_channels=out_channels, stride=first_stride if i == 0 else 1,
                              dilation=dilation, norm=norm, residual=residual, shortcut=shortcut)
                if block is Bottleneck:
                    kwargs.update(bottleneck_channels=int(planes * width_per_group / 64) * groups, groups=groups,
                                  stride_in_1x1=stride_in_1x1)
                blocks.append(block(**kwargs))
                channels = out_channels
            stride_so_far *= first_stride
            stages[name] = nn.Sequential(*blocks)
            shapes[name] = ShapeSpec(out_channels, stride_so_far)
        self._num_features = channels
        # Initialise before freezing so FrozenBN copies initialised statistics.
        self._init_weights(stages, zero_init_residual=zero_init_residual)
        self._init_stages(stages, shapes, out_features=out_features, freeze_at=freeze_at, norm_eval=norm_eval,
                          checkpoint_stages=checkpoint_stages)

    @staticmethod
    def _validate(*, block, layers, shortcut, res5_dilation, groups, width_per_group, residual,
                  zero_init_residual) -> None:
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints (blocks in res2..res5), got {tuple(layers)}")
        if shortcut not in SHORTCUT_CHOICES:
            raise ValueError(f"unknown shortcut {shortcut!r}; available: {', '.join(SHORTCUT_CHOICES)}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation!r}")
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64 (as torchvision)")
        if zero_init_residual and not residual:
            raise ValueError("zero_init_residual=True would zero every block of a plain net (no shortcut carries "
                             "the signal); use it only with residual=True")

    @staticmethod
    def _init_weights(stages: "OrderedDict[str, nn.Module]", *, zero_init_residual: bool) -> None:
        # torchvision's ResNet initialisation, so from-scratch training matches its recipes.
        for stage in stages.values():
            for module in stage.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
            # A second pass: modules() visits a block before its norms, which the loop above resets to 1.
            for module in stage.modules():
                if zero_init_residual and isinstance(module, (BasicBlock, Bottleneck)):
                    module.zero_init_last_norm()

    def build_classifier_head(self, num_classes: int) -> nn.Module:
        """res5 [N, C, H, W] -> adaptive avg pool -> flatten -> Linear "fc" -> logits [N, num_classes]."""
        channels = self.stage_shapes()[self.stage_names[-1]].channels
        return nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=nn.Linear(channels, num_classes)
        ))

    @property
    def size_divisibility(self) -> int:
        return 32 if "res5" in self.stages and self.stage_shapes()["res5"].stride == 32 else 0


# -- builders ---------------------------------------------------------------------------------------------------
def _builder(depth: int, *, residual: bool = True, groups: int = 1, width_per_group: int = 64):
    block, default_layers = DEPTH_LAYERS[depth]

    def build(
        *,
        out_features: Optional[Sequence[str]] = None,
        norm: NormSpec = "BN",
        freeze_at: int = 0,
        norm_eval: bool = False,
        shortcut: str = "B",
        stride_in_1x1: bool = False,
        res5_dilation: int = 1,
        zero_init_residual: bool = False,
        checkpoint_stages: Sequence[str] = (),
        in_channels: int = 3,
        layers: Optional[Sequence[int]] = None,
    ) -> ResNet:
        return ResNet(
            block=block, layers=tuple(layers) if layers is not None else default_layers, in_channels=in_channels,
            norm=norm, residual=residual, shortcut=shortcut, groups=groups, width_per_group=width_per_group,
            stride_in_1x1=stride_in_1x1, res5_dilation=res5_dilation, zero_init_residual=zero_init_residual,
            out_features=out_features, freeze_at=freeze_at, norm_eval=norm_eval,
            checkpoint_stages=checkpoint_stages,
        )

    return build


def _register(name: str, family: str, description: str, depth: int, **arch) -> None:
    register_backbone(name, family=family, description=description)(_builder(depth, **arch))


for _depth in (18, 34, 50, 101, 152):
    _register(f"resnet{_depth}", "resnet", f"ResNet-{_depth} (He et al. 2015), torchvision/detectron2 layout", _depth)
for _depth in (18, 34, 50, 101, 152):
    _register(f"plain{_depth}", "plain", f"plain twin of ResNet-{_depth}: same convs, no shortcuts", _depth,
              residual=False)
_register("resnext50_32x4d", "resnext", "ResNeXt-50 32x4d (Xie et al. 2017)", 50, groups=32, width_per_group=4)
_register("resnext101_32x8d", "resnext", "ResNeXt-101 32x8d (Xie et al. 2017)", 101, groups=32, width_per_group=8)
_register("wide_resnet50_2", "resnet", "Wide ResNet-50-2 (Zagoruyko & Komodakis 2016)", 50, width_per_group=128)
