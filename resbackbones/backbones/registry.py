"""Name -> builder table for every backbone, with errors that list the valid choices."""
import difflib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ..weights.pretrained import adopt_conventions, load_backbone
from ..weights.resolve import resolve_weights
from .base import Backbone


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    family: str  # "resnet", "plain", "resnext", "cifar_resnet", "cifar_plain", "vgg"
    builder: Callable[..., Backbone]
    description: str


_REGISTRY: Dict[str, BackboneEntry] = {}
WeightsReference = Union[str, os.PathLike]


def register_backbone(name: str, *, family: str, description: str = ""):
    """Decorator: register a keyword-only builder `fn(**options) -> Backbone` under `name`."""

    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneEntry(name, family, builder, description or (builder.__doc__ or "").strip())
        return builder

    return decorator


def list_backbones(family: Optional[str] = None) -> List[str]:
    """Registered backbone names (in registration order), optionally only one family."""
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def get_entry(name: str) -> BackboneEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown backbone {name!r}{hint}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def builder_options(name: str) -> List[str]:
    """Keyword options accepted by the builder of `name`."""
    params = inspect.signature(get_entry(name).builder).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def check_options(name: str, options: Mapping[str, Any]) -> List[str]:
    """The valid builder options of `name`; ValueError listing them (and the closest) for any unknown one."""
    valid = builder_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"backbone {name!r}: unknown option(s) {', '.join(hints)}; valid: {', '.join(valid)}")
    return valid


def build_backbone(name: str, *, weights: Optional[WeightsReference] = None, **options) -> Backbone:
    """Build a registered backbone, e.g. build_backbone("resnet50", out_features=("res4", "res5"), freeze_at=2).

    weights: None / "" (random init), "torchvision:<ENUM>" (e.g. "torchvision:IMAGENET1K_V2", "torchvision:DEFAULT";
    torchvision's cache under $TORCH_HOME, downloaded unless RESBACKBONES_OFFLINE=1) or a file (ours, torchvision
    .pth, detectron2 .pkl, a tools/train_cls.py checkpoint or --export); see rb.weights.resolve_weights. Loaded
    strictly; the weights' stride placement is adopted unless stride_in_1x1 is given, and their WeightsMetadata is
    kept as `backbone.weights_metadata`. An unknown name or option raises ValueError listing what is valid; bad
    weights raise rb.weights.WeightsError.
    """
    entry = get_entry(name)
    valid = check_options(name, options)
    if not weights:
        return entry.builder(**options)
    resolved = resolve_weights(weights, arch=name)
    backbone = entry.builder(**adopt_conventions(name, resolved, options, valid))
    load_backbone(backbone, resolved, name=name)
    return backbone
