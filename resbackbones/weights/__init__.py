"""Weights are data: safetensors/torch I/O without pickled code, converters from torchvision/detectron2/CIFAR,
and resolve_weights: any reference (file or "torchvision:<ENUM>") -> our state dict + WeightsMetadata."""
from .errors import WeightsError
from .io import load, load_with_metadata, save
from .matching import check_state_dict, load_state_dict
from .convert import CONVERTERS, backbone_state_dict, convert  # noqa: F401
from .convert_detectron2 import from_detectron2  # noqa: F401
from .convert_torchvision import from_torchvision  # noqa: F401
from .convert_cifar import from_cifar_checkpoint  # noqa: F401
from .metadata import WeightsMetadata, check_compatible, load_into  # noqa: F401
from .resolve import ResolvedWeights, resolve_weights  # noqa: F401
from .pretrained import weights_metadata  # noqa: F401

__all__ = ["ResolvedWeights", "WeightsError", "WeightsMetadata", "check_state_dict", "load", "load_state_dict",
           "load_with_metadata", "resolve_weights", "save", "weights_metadata"]
