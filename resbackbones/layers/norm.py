"""One vocabulary for normalisation layers: get_norm("BN" | "FrozenBN" | "SyncBN" | "GN" | "none")."""
from typing import Callable, Optional, Union

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NormSpec = Union[str, None, Callable[[int], nn.Module]]

_NORMS = {
    "BN": lambda channels: nn.BatchNorm2d(channels),
    "FrozenBN": lambda channels: FrozenBatchNorm2d(channels),
    "SyncBN": lambda channels: nn.SyncBatchNorm(channels),
    # 32 groups as in Wu & He (2018); channels below 32 (CIFAR widths) fall back to one group per 16/8 channels.
    "GN": lambda channels: nn.GroupNorm(_gn_groups(channels), channels),
}
NORM_CHOICES = tuple(_NORMS) + ("none",)


def _gn_groups(channels: int) -> int:
    for groups in (32, 16, 8, 4, 2, 1):
        if channels % groups == 0 and channels // groups >= 1:
            return groups
    return 1


def get_norm(norm: NormSpec, channels: int) -> Optional[nn.Module]:
    """Build a norm layer for `channels` feature channels; None for "none"/""/None.

    norm may also be a callable channels -> nn.Module for anything not in the vocabulary.
    """
    if norm is None or norm == "" or norm == "none":
        return None
    if callable(norm):
        return norm(channels)
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; available: {', '.join(NORM_CHOICES)}")
    return _NORMS[norm](channels)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Return `module` with every BatchNorm2d/SyncBatchNorm replaced by a FrozenBatchNorm2d holding its statistics.

    torchvision has FrozenBatchNorm2d but no converter; this is detectron2's convert_frozen_batchnorm.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
