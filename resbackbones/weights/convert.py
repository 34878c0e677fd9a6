"""One table from checkpoint source to converter: convert("torchvision" | "detectron2" | "cifar", path_or_state).

Each entry reads the file its own way (torch weights_only, or the numpy-only unpickler for .pkl), renames to our
Classifier's state dict (`backbone.stages.*`, `head.fc.*`) and says what the weights expect (WeightsMetadata).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from .errors import WeightsError
from .metadata import WeightsMetadata

Source = Union[str, os.PathLike, Mapping[str, Any]]
StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Converter:
    # path or raw dict -> (our Classifier state dict, hints about the file for its metadata)
    convert: Callable[[Source], Tuple[StateDict, Dict[str, Any]]]
    # (converted state, hints, arch override) -> metadata
    metadata: Callable[[StateDict, Dict[str, Any], Optional[str]], WeightsMetadata]
    description: str


def _read_torch(source: Source) -> Dict[str, Any]:
    if isinstance(source, (str, os.PathLike)):
        from .io import load

        return load(source)
    return dict(source)


def _torchvision(source: Source) -> Tuple[StateDict, Dict[str, Any]]:
    from .convert_torchvision import from_torchvision

    return from_torchvision(_read_torch(source)), {}


def _detectron2(source: Source) -> Tuple[StateDict, Dict[str, Any]]:
    from .convert_detectron2 import from_detectron2, read_pickle

    raw = source
    if isinstance(source, (str, os.PathLike)):
        raw = read_pickle(source) if Path(source).suffix == ".pkl" else _read_torch(source)
    # detectron2's convert-torchvision-to-d2.py marks its files __author__ = "torchvision": those keep
    # torchvision's stride placement and RGB input, unlike the MSRA caffe2 files.
    author = raw.get("__author__") if isinstance(raw, Mapping) else None
    return from_detectron2(raw), {"torchvision_style": author == "torchvision"}


def _cifar(source: Source) -> Tuple[StateDict, Dict[str, Any]]:
    from .convert_cifar import from_cifar_checkpoint  # written alongside the CIFAR family

    return from_cifar_checkpoint(source), {}


def _num_classes(state: StateDict) -> Optional[int]:
    for key in ("head.fc.weight", "head.fc8.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _torchvision_meta(state: StateDict, hints: Dict[str, Any], arch: Optional[str]) -> WeightsMetadata:
    return WeightsMetadata.torchvision(arch or infer_arch(state) or "unknown", num_classes=_num_classes(state))


def _detectron2_meta(state: StateDict, hints: Dict[str, Any], arch: Optional[str]) -> WeightsMetadata:
    arch = arch or infer_arch(state) or "unknown"
    if hints.get("torchvision_style"):
        meta = WeightsMetadata.torchvision(arch, num_classes=_num_classes(state))
        meta.pixel_mean = tuple(255.0 * v for v in meta.pixel_mean)
        meta.pixel_std = tuple(255.0 * v for v in meta.pixel_std)
        meta.pixel_scale, meta.source = 255.0, "detectron2"
        return meta
    return WeightsMetadata.detectron2_msra(arch, num_classes=_num_classes(state))


def _cifar_meta(state: StateDict, hints: Dict[str, Any], arch: Optional[str]) -> WeightsMetadata:
    if arch is None:
        from .convert_cifar import infer_cifar_arch

        try:
            arch = infer_cifar_arch(_to_akamaster_names(state))[0]
        except WeightsError:
            arch = "unknown"
    return WeightsMetadata(arch=arch, source="cifar", input_format="RGB", pixel_scale=1.0,
                           num_classes=_num_classes(state),
                           notes="akamaster/pytorch_resnet_cifar10: RGB 0-1 normalised with ImageNet mean/std")


def _to_akamaster_names(state: StateDict) -> StateDict:
    # Only the key layout matters for arch inference: map our names back to theirs.
    out = {}
    for key, value in state.items():
        key = key.replace("backbone.stages.stem.conv1.norm.", "bn1.").replace("backbone.stages.stem.", "")
        key = key.replace("head.fc.", "linear.")
        for stage in (2, 3, 4):
            key = key.replace(f"backbone.stages.res{stage}.", f"layer{stage - 1}.")
        out[key] = value
    return out


CONVERTERS: Dict[str, Converter] = {
    "torchvision": Converter(_torchvision, _torchvision_meta, "torchvision ResNet/ResNeXt/Wide-ResNet/VGG state dict"),
    "detectron2": Converter(_detectron2, _detectron2_meta, "detectron2 model-zoo .pkl (caffe2 names) or .pth"),
    "cifar": Converter(_cifar, _cifar_meta, "akamaster/pytorch_resnet_cifar10 checkpoint (.th)"),
}


def convert(source_kind: str, source: Source, *, arch: Optional[str] = None) -> Tuple[StateDict, WeightsMetadata]:
    """(our Classifier state dict, metadata) for a checkpoint of kind `source_kind` (a key of CONVERTERS)."""
    if source_kind not in CONVERTERS:
        raise WeightsError(f"unknown checkpoint source {source_kind!r}; available: {', '.join(CONVERTERS)}")
    entry = CONVERTERS[source_kind]
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise WeightsError(f"weights file not found: {source}")
    state, hints = entry.convert(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the weights"
    _refuse_non_float(state, name)
    meta = entry.metadata(state, hints, arch)
    if arch is not None:  # a wrong --arch would be recorded in the metadata and mislead every later load
        found = entry.metadata(state, hints, None).arch
        if found != "unknown" and _twin(found) != _twin(arch):
            raise WeightsError(f"{name} holds {found} weights but --arch is {arch}: give --arch {found} (or leave "
                               f"it out: it is inferred)")
    return state, meta


def _twin(arch: str) -> str:
    # A ResNet with parameter-free (option A) shortcuts and its plain twin hold the same tensors.
    return arch.replace("plain", "resnet")


def _refuse_non_float(state: StateDict, name: str) -> None:
    bad = [(k, v.dtype) for k, v in state.items()
           if torch.is_tensor(v) and not v.is_floating_point() and not k.endswith("num_batches_tracked")]
    if bad:
        key, dtype = bad[0]
        raise WeightsError(f"{name}: {len(bad)} weight tensor(s) are not floating point (first: {key}, {dtype}); "
                           f"quantized or corrupted weights are not converted: give the float checkpoint")


# -- architecture inference from our names ------------------------------------------------------------------------
_RESNET_ARCHS = {
    ("basic", (2, 2, 2, 2), 64): "resnet18",
    ("basic", (3, 4, 6, 3), 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 64): "resnet50",
    ("bottleneck", (3, 4, 23, 3), 64): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 64): "resnet152",
    ("bottleneck", (3, 4, 6, 3), 4): "resnext50_32x4d",
    ("bottleneck", (3, 4, 23, 3), 8): "resnext101_32x8d",
    ("bottleneck", (3, 4, 6, 3), 128): "wide_resnet50_2",
}


def infer_arch(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Registered ImageNet ResNet-family name for a converted state dict (`backbone.stages.*`), else None."""
    prefix = "backbone.stages."
    if f"{prefix}res2.0.conv1.weight" not in state or f"{prefix}res5.0.conv1.weight" not in state:
        return None
    counts = tuple(
        len({k[len(prefix):].split(".")[1] for k in state if k.startswith(f"{prefix}res{stage}.")})
        for stage in (2, 3, 4, 5)
    )
    kind = "bottleneck" if f"{prefix}res2.0.conv3.weight" in state else "basic"
    conv2 = state[f"{prefix}res2.0.conv2.weight"]
    width = int(conv2.shape[1])  # in-channels per group of res2's 3x3: 64 (ResNet), 4/8 (ResNeXt), 128 (wide)
    name = _RESNET_ARCHS.get((kind, counts, width))
    is_plain = f"{prefix}res2.0.shortcut.weight" not in state and f"{prefix}res3.0.shortcut.weight" not in state
    if name is not None and is_plain and name.startswith("resnet"):
        return "plain" + name[len("resnet"):]  # no projection anywhere: the plain twin (or option A)
    return name


def backbone_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """A Classifier state dict's backbone part, keys without "backbone." (what Backbone.load_state_dict takes)."""
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
