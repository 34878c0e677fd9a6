"""Conv2d that carries its own norm and activation, so weights read `res2.0.conv1.norm.weight` as in detectron2."""
from typing import Optional

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d followed by an optional norm and an optional activation.

    Keeping norm inside the conv (detectron2's layout) gives the caffe2/detectron2 parameter names without a
    renaming table, and lets BN folding find each conv's norm directly.
    Input [N, C_in, H, W] -> output [N, C_out, H', W'].
    """

    def __init__(self, *args, norm: Optional[nn.Module] = None, activation: Optional[nn.Module] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
