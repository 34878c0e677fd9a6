"""Weights are data: safetensors/torch I/O without pickled code, converters from torchvision/detectron2/CIFAR."""
from .errors import WeightsError
from .io import load, load_with_metadata, save
from .matching import check_state_dict, load_state_dict

__all__ = ["WeightsError", "check_state_dict", "load", "load_state_dict", "load_with_metadata", "save"]
