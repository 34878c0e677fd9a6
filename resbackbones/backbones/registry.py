"""Name -> builder table for every backbone, with errors that list the valid choices."""
import difflib
import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from .base import Backbone


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    family: str  # "resnet", "plain", "resnext", "cifar_resnet", "cifar_plain", "vgg"
    builder: Callable[..., Backbone]
    description: str


_REGISTRY: Dict[str, BackboneEntry] = {}


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
    _ensure_registered()
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def get_entry(name: str) -> BackboneEntry:
    _ensure_registered()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown backbone {name!r}{hint}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def builder_options(name: str) -> List[str]:
    """Keyword options accepted by the builder of `name`."""
    params = inspect.signature(get_entry(name).builder).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def build_backbone(name: str, **options) -> Backbone:
    """Build a registered backbone, e.g. build_backbone("resnet50", out_features=("res4", "res5"), freeze_at=2).

    An unknown name or option raises ValueError listing what is valid.
    """
    entry = get_entry(name)
    valid = builder_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"backbone {name!r}: unknown option(s) {', '.join(hints)}; valid: {', '.join(valid)}")
    return entry.builder(**options)


def _ensure_registered() -> None:
    # Importing the family modules runs their @register_backbone decorators.
    from . import families  # noqa: F401
