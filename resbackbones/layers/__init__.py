"""Building blocks shared by every backbone: ShapeSpec, norms, conv-with-norm."""
from .conv import Conv2d
from .norm import NORM_CHOICES, convert_frozen_batchnorm, get_norm
from .shape_spec import ShapeSpec

__all__ = ["Conv2d", "NORM_CHOICES", "ShapeSpec", "convert_frozen_batchnorm", "get_norm"]
