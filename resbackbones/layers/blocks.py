"""Residual blocks (BasicBlock, Bottleneck) with shortcut options A/B/C, and their plain twins (residual=False).

Parameter names follow detectron2 (`conv1.weight`, `conv1.norm.running_mean`, `shortcut.weight`,
`shortcut.norm.*`), so caffe2/detectron2 checkpoints load without renaming; torchvision checkpoints need the
small table in resbackbones/weights/convert_torchvision.py.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d
from .norm import NormSpec, get_norm

SHORTCUT_CHOICES = ("A", "B", "C")


class ZeroPadShortcut(nn.Module):
    """He et al. (2015) option A: identity, subsampled by `stride`, with zero channels padded around it.

    Parameter-free. [N, C_in, H, W] -> [N, C_out, ceil(H / stride), ceil(W / stride)]; the input channels sit in
    the middle (pad_before zeros, then the input, then pad_after zeros), as in akamaster's CIFAR ResNets:
    F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)).
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut 'A' pads channels with zeros, so it cannot shrink {in_channels} -> {out_channels} channels; "
                f"use shortcut 'B' or 'C'"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def make_shortcut(
    *, in_channels: int, out_channels: int, stride: int, shortcut: str, norm: NormSpec
) -> Optional[nn.Module]:
    """The shortcut branch of a residual block; None means identity.

    "A": identity, or ZeroPadShortcut when the shape changes (no parameters).
    "B": identity, or a 1x1 projection conv + norm when the shape changes (the default; torchvision/detectron2).
    "C": a 1x1 projection conv + norm in every block.
    """
    if shortcut not in SHORTCUT_CHOICES:
        raise ValueError(f"unknown shortcut {shortcut!r}; available: {', '.join(SHORTCUT_CHOICES)}")
    changes_shape = stride != 1 or in_channels != out_channels
    if shortcut == "A":
        if not changes_shape:
            return None
        return ZeroPadShortcut(in_channels=in_channels, out_channels=out_channels, stride=stride)
    if shortcut == "B" and not changes_shape:
        return None
    return Conv2d(
        in_channels, out_channels, kernel_size=1, stride=stride, bias=norm in (None, "", "none"),
        norm=get_norm(norm, out_channels),
    )


def _conv(in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1, dilation: int = 1,
          groups: int = 1, norm: NormSpec, relu: bool) -> Conv2d:
    # Convs followed by a norm carry no bias (the norm's bias does that job); without a norm they need one.
    padding = dilation * (kernel_size - 1) // 2
    return Conv2d(
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
        groups=groups, bias=norm in (None, "", "none"), norm=get_norm(norm, out_channels),
        activation=nn.ReLU(inplace=True) if relu else None,
    )


class _ResidualBlock(nn.Module):
    """Shared forward: branch(x) (+ shortcut(x) when residual) -> ReLU."""

    residual: bool

    def _init_shortcut(self, *, in_channels: int, out_channels: int, stride: int, residual: bool, shortcut: str,
                       norm: NormSpec) -> None:
        self.residual = residual
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        # Plain twin: no shortcut module at all, so no shortcut parameters can exist.
        self.shortcut = (
            make_shortcut(in_channels=in_channels, out_channels=out_channels, stride=stride, shortcut=shortcut,
                          norm=norm)
            if residual else None
        )

    def _last_norm(self) -> Optional[nn.Module]:
        raise NotImplementedError

    def zero_init_last_norm(self) -> None:
        """Goyal et al. (2017): start each residual branch at zero so the block begins as identity."""
        norm = self._last_norm()
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34, CIFAR ResNets). [N, C_in, H, W] -> [N, C_out, H / stride, W / stride].

    residual=False gives the plain twin (same convs, no shortcut, no addition).
    """

    expansion = 1

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 norm: NormSpec = "BN", residual: bool = True, shortcut: str = "B"):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, kernel_size=3, stride=stride, dilation=dilation, norm=norm,
                           relu=True)
        self.conv2 = _conv(out_channels, out_channels, kernel_size=3, dilation=dilation, norm=norm, relu=False)
        self._init_shortcut(in_channels=in_channels, out_channels=out_channels, stride=stride, residual=residual,
                            shortcut=shortcut, norm=norm)

    def _last_norm(self) -> Optional[nn.Module]:
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.residual:
            # In place, as torchvision: one less activation-sized buffer (the norm's backward needs its input only).
            if self.shortcut is not None:
                out += self.shortcut(x)
            else:
                out += x
        return F.relu_(out)


class Bottleneck(_ResidualBlock):
    """1x1 reduce -> 3x3 (grouped for ResNeXt, dilated for res5 dilation) -> 1x1 expand (ResNet-50/101/152).

    [N, C_in, H, W] -> [N, C_out, H / stride, W / stride].
    stride_in_1x1=True puts the stride in conv1 (MSRA caffe weights, detectron2's default); False puts it in the
    3x3 conv2 (torchvision, "ResNet v1.5"). residual=False gives the plain twin.
    """

    expansion = 4

    def __init__(self, *, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 groups: int = 1, dilation: int = 1, stride_in_1x1: bool = False, norm: NormSpec = "BN",
                 residual: bool = True, shortcut: str = "B"):
        super().__init__()
        if bottleneck_channels % groups:
            raise ValueError(f"bottleneck_channels={bottleneck_channels} is not divisible by groups={groups}")
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, norm=norm, relu=True)
        self.conv2 = _conv(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                           dilation=dilation, groups=groups, norm=norm, relu=True)
        self.conv3 = _conv(bottleneck_channels, out_channels, kernel_size=1, norm=norm, relu=False)
        self._init_shortcut(in_channels=in_channels, out_channels=out_channels, stride=stride, residual=residual,
                            shortcut=shortcut, norm=norm)

    def _last_norm(self) -> Optional[nn.Module]:
        return self.conv3.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        if self.residual:
            # In place, as torchvision: one less activation-sized buffer (the norm's backward needs its input only).
            if self.shortcut is not None:
                out += self.shortcut(x)
            else:
                out += x
        return F.relu_(out)
