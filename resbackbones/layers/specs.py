"""Architecture tables read by both the backbone builders and the weight converters.

They live below both packages so that weights/ (which converts torchvision's flat VGG `features` by walking these
conv counts) need not import backbones/ (which loads weights through weights/): neither imports the other's modules
in a circle.
"""
from typing import Dict, Tuple

# VGG (Simonyan & Zisserman 2015): the paper's conv blocks as stages, their output channels, and the convs per stage
# for each depth (torchvision's cfgs "A", "B", "D", "E").
VGG_STAGE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)
VGG_DEPTH_TO_CONVS: Dict[int, Tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
