"""Multiply-accumulates of a model at a given input size, counted by torch's own FlopCounterMode.

MACs = FLOPs / 2 (FlopCounterMode counts a multiply-add as 2 FLOPs). Only convolutions and matrix products are
counted, the convention of the papers' numbers (ResNet-50 ~4.1 G, ResNet-101 ~7.8 G, ResNet-152 ~11.5 G MACs at
224x224); norms, activations, pooling and additions are not.
"""
from typing import Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, input_size: Tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """MACs of one forward pass of `model` in eval mode on zeros of `input_size` (default one 224x224 image)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
