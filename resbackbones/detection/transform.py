"""torchvision's GeneralizedRCNNTransform (resize, normalise, batch, map outputs back) plus BGR-order weights and a
channels_last batch."""
from typing import List

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class DetectionTransform(GeneralizedRCNNTransform):
    """Images float [3, H, W] in [0, 1], RGB -> resized, normalised, padded batch [N, 3, H', W'].

    input_format "BGR" flips the channels before normalising, for weights trained on BGR input (detectron2 / caffe2
    MSRA ResNets); image_mean/std are then given in BGR order, in [0, 1] units. channels_last lays the batch out
    NHWC: every conv of the backbone, FPN and RPN then runs oneDNN's (CPU) / cuDNN's NHWC kernels, which are faster
    than NCHW (ResNet-50 train step on 2 CPU threads ~1.1x) and give the same values up to float rounding.
    """

    def __init__(self, *, min_size, max_size: int, image_mean, image_std, input_format: str = "RGB",
                 size_divisible: int = 32, channels_last: bool = False):
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        super().__init__(min_size=min_size, max_size=max_size, image_mean=list(image_mean),
                         image_std=list(image_std), size_divisible=size_divisible)
        self.input_format = input_format
        self.channels_last = channels_last

    def normalize(self, image: Tensor) -> Tensor:
        if self.input_format == "BGR":
            image = image.flip(0)
        return super().normalize(image)

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        batch = super().batch_images(images, size_divisible)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch
