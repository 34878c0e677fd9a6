"""ShapeSpec: what a feature map looks like without running the model."""
from typing import NamedTuple


class ShapeSpec(NamedTuple):
    """Shape of one named feature map.

    channels: C of the [N, C, H, W] tensor.
    stride:   input pixels per feature pixel (H_in / H), e.g. 4 for res2, 32 for res5.
    """

    channels: int
    stride: int
