"""Weight names and preprocessing conventions shared by our checkpoints and detectron2 (no detectron2 import here).

Names. Our Backbone keeps its stages under `stages.` (`stages.res2.0.conv1.weight`); detectron2's ResNet, and our
detectron2 adapter, use the bare stage names (`res2.0.conv1.weight`, `stem.conv1.norm.running_mean`); a
detectron2 model prefixes them with `backbone.bottom_up.` (FPN) or `backbone.` (C4). The converters here map
between the three without touching tensors.

Conventions. Weights only work with the preprocessing they were trained with. detectron2 keeps it in the config
(INPUT.FORMAT, MODEL.PIXEL_MEAN / PIXEL_STD in 0..255 units, in INPUT.FORMAT channel order, and
MODEL.RESNETS.STRIDE_IN_1X1); our weight files keep it in their metadata (rb.weights.metadata.WeightsMetadata).
`Conventions` is the common form.
"""
import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..weights import WeightsError
from ..weights.metadata import IMAGENET_MEAN, IMAGENET_STD, WeightsMetadata

StateDict = Dict[str, torch.Tensor]

@dataclass(frozen=True)
class Conventions:
    """Preprocessing and layout that weights expect; None = not recorded (not checked).

    input_format: "RGB" or "BGR". pixel_mean / pixel_std: per channel, 0..255 units, in input_format order.
    stride_in_1x1: True for MSRA/caffe2 ResNets, False for torchvision ("v1.5") ResNets.
    """

    input_format: Optional[str] = None
    pixel_mean: Optional[Tuple[float, ...]] = None
    pixel_std: Optional[Tuple[float, ...]] = None
    stride_in_1x1: Optional[bool] = None

    def mismatches(self, other: "Conventions") -> List[Tuple[str, object, object]]:
        """(field, ours, other's) for every field recorded on both sides that differs (means/stds to 1e-3)."""
        out = []
        for field in ("input_format", "stride_in_1x1"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine is not None and theirs is not None and mine != theirs:
                out.append((field, mine, theirs))
        for field in ("pixel_mean", "pixel_std"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine is not None and theirs is not None and (
                len(mine) != len(theirs) or any(abs(a - b) > 1e-3 for a, b in zip(mine, theirs))
            ):
                out.append((field, list(mine), list(theirs)))
        return out


def _floats(text: str, key: str, source: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in json.loads(text))
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{source}: metadata {key}={text!r} is not a JSON list of numbers ({error})") from None


def conventions_from_metadata(metadata: Mapping[str, str], *, source: str = "weights") -> Conventions:
    """Read conventions from a weight file's metadata (0..255 units, like detectron2's config).

    Canonical form: rb.weights.metadata.WeightsMetadata (`rb.input_format`, `rb.pixel_mean` in units of
    `rb.pixel_scale`, `rb.stride_in_1x1`). Plain keys are read too: input_format, image_mean / image_std
    (JSON lists, [0, 1] units, input_format channel order) and stride_in_1x1. Unrecorded fields stay None.
    """
    meta = WeightsMetadata.from_dict(metadata)
    if meta is not None:
        scale = 255.0 / meta.pixel_scale
        return Conventions(
            input_format=meta.input_format, pixel_mean=tuple(v * scale for v in meta.pixel_mean),
            pixel_std=tuple(v * scale for v in meta.pixel_std), stride_in_1x1=meta.stride_in_1x1,
        )
    fmt = metadata.get("input_format")
    if fmt is not None and fmt not in ("RGB", "BGR"):
        raise WeightsError(f"{source}: metadata input_format={fmt!r}; expected 'RGB' or 'BGR'")
    values = {name: tuple(255.0 * v for v in _floats(metadata[f"image_{name}"], f"image_{name}", source))
              for name in ("mean", "std") if f"image_{name}" in metadata}
    stride = metadata.get("stride_in_1x1")
    if stride is not None and stride.strip().lower() not in ("true", "false"):
        raise WeightsError(f"{source}: metadata stride_in_1x1={stride!r}; expected true or false")
    return Conventions(
        input_format=fmt, pixel_mean=values.get("mean"), pixel_std=values.get("std"),
        stride_in_1x1=None if stride is None else stride.strip().lower() == "true",
    )


def conventions_to_metadata(conv: Conventions, *, arch: str = "unknown", source: str = "detectron2") -> Dict[str, str]:
    """WeightsMetadata(...).to_dict() recording `conv` (0..255 units: pixel_scale 255)."""
    meta = WeightsMetadata(
        arch=arch, source=source, input_format=conv.input_format or "RGB", pixel_scale=255.0,
        pixel_mean=conv.pixel_mean if conv.pixel_mean is not None else tuple(255.0 * v for v in IMAGENET_MEAN),
        pixel_std=conv.pixel_std if conv.pixel_std is not None else tuple(255.0 * v for v in IMAGENET_STD),
        stride_in_1x1=conv.stride_in_1x1,
    )
    return meta.to_dict()


# -- names ------------------------------------------------------------------------------------------------------
def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def to_detectron2_names(state: Mapping[str, torch.Tensor], *, source: str = "weights") -> StateDict:
    """Our backbone (`stages.*`) or classifier (`backbone.stages.*` + `head.*`) state -> detectron2 backbone names.

    `stages.res2.0.conv1.weight` -> `res2.0.conv1.weight`; the classification head is dropped.
    Raises WeightsError (first keys listed) if the state has no `stages.` entries.
    """
    state = dict(state)
    if any(k.startswith("backbone.stages.") for k in state):
        state = _strip(state, "backbone.")
    out = _strip(state, "stages.")
    if not out:
        raise WeightsError(f"{source}: expected our backbone/classifier names (stages.* or backbone.stages.*); "
                           f"first keys: {', '.join(list(state)[:5])}")
    return out


def from_detectron2_names(state: Mapping[str, torch.Tensor], *, stage_names: Iterable[str],
                          source: str = "weights") -> StateDict:
    """detectron2 backbone state (bare `res2.*`, or under `backbone.bottom_up.` / `backbone.`) -> our `stages.*`.

    Only entries of `stage_names` (e.g. stem, res2..res5) are kept, so FPN and head weights are left out.
    Raises WeightsError if none is found.
    """
    stage_names = tuple(stage_names)
    state = dict(state)
    for prefix in ("backbone.bottom_up.", "backbone."):
        if any(k.startswith(prefix + s + ".") for k in state for s in stage_names):
            state = _strip(state, prefix)
            break
    out = {"stages." + k: v for k, v in state.items() if k.split(".", 1)[0] in stage_names}
    if not out:
        raise WeightsError(f"{source}: no weights for stages {', '.join(stage_names)}; "
                           f"first keys: {', '.join(list(state)[:5])}")
    return out
