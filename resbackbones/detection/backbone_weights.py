"""Load backbone weights into a detector's backbone from any of the layouts users have, strictly.

Accepted (after rb.weights.load, which never runs pickled code):
  backbone state dict        stages.res2.0.conv1.weight ...      (tools/train_cls.py --export)
  classifier state dict      backbone.stages.* + head.*          (head dropped)
  torchvision ResNet / VGG   conv1.weight, layer1.0... / features.0.weight   (converted with rb.weights' converter)
  torchvision detector       backbone.body.conv1.weight ...      (backbone part converted; FPN/heads ignored)
  detectron2 (converted)     stem.conv1.weight, res2.0... or backbone.bottom_up.res2...
  our detector checkpoint    backbone.body.stages.*
Stages the detector does not build (e.g. a classifier's res5 under a res4-only model) are dropped; every other
difference (missing, unexpected key, shape) is an error listing the keys and both shapes.
"""
from typing import Dict, Mapping, Optional, Sequence

import torch

from ..backbones import Backbone
from ..weights import WeightsError, load_state_dict, load_with_metadata

StateDict = Dict[str, torch.Tensor]


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def to_backbone_state(state: Mapping[str, torch.Tensor], *, source: str = "weights") -> StateDict:
    """Any accepted layout -> {"stages.<stage>....": tensor} (our Backbone's own names)."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    if any(k.startswith("backbone.body.") for k in state):
        state = _strip(state, "backbone.body.")  # a detector checkpoint: ours or torchvision's
    elif any(k.startswith("backbone.bottom_up.") for k in state):
        state = {"stages." + k: v for k, v in _strip(state, "backbone.bottom_up.").items()}  # detectron2 model
    if "conv1.weight" in state or any(k.startswith("features.") for k in state):
        from ..weights.convert_torchvision import from_torchvision

        state = from_torchvision(state)
    if any(k.startswith("backbone.") for k in state):
        state = _strip(state, "backbone.")  # a classifier: drop head.*
    if state and not any(k.startswith("stages.") for k in state):
        if any(k.startswith(("stem.", "res2.")) for k in state):
            state = {"stages." + k: v for k, v in state.items()}  # detectron2 backbone names
        else:
            raise WeightsError(
                f"{source}: not a backbone/classifier/torchvision/detectron2 state dict; first keys: "
                f"{', '.join(list(state)[:5])}"
            )
    return {k: v for k, v in state.items() if k.startswith("stages.")}


def check_preprocessing(metadata: Mapping[str, str], *, backbone: Backbone, image_mean: Sequence[float],
                        image_std: Sequence[float], input_format: str, source: str) -> None:
    """Refuse weights whose recorded preprocessing differs from the detector's (a silent ~10 AP loss otherwise).

    Reads rb.weights' metadata (rb.input_format, rb.pixel_mean/std/scale, rb.stride_in_1x1; see
    resbackbones/weights/metadata.py): channel order and stride placement must match (check_compatible), and
    pixel_mean/std, converted to [0, 1] units, must equal model.input.image_mean/std. No metadata: nothing checked.
    """
    from ..weights.metadata import WeightsMetadata, check_compatible

    meta = WeightsMetadata.from_dict(metadata)
    if meta is None:
        return
    check_compatible(meta, backbone, input_format=input_format, source=source)
    for key, recorded, expected in (("image_mean", meta.pixel_mean, image_mean), ("image_std", meta.pixel_std, image_std)):
        recorded = [v / meta.pixel_scale for v in recorded]
        if len(recorded) != len(expected) or any(abs(a - b) > 1e-3 for a, b in zip(recorded, expected)):
            raise WeightsError(
                f"{source} ({meta.source} {meta.arch}) expects {meta.input_format} input normalised with "
                f"{key[6:]} {[round(v, 5) for v in recorded]} (0-1 units) but model.input.{key} is {list(expected)}"
            )


def load_backbone_weights(backbone: Backbone, path: str, *, image_mean: Optional[Sequence[float]] = None,
                          image_std: Optional[Sequence[float]] = None, input_format: str = "RGB") -> Backbone:
    """Read `path` (.safetensors or torch file) and load it strictly into `backbone` (see module doc)."""
    state, metadata = load_with_metadata(path)
    if image_mean is not None and image_std is not None:
        check_preprocessing(metadata, backbone=backbone, image_mean=image_mean, image_std=image_std,
                            input_format=input_format, source=str(path))
    state = to_backbone_state(state, source=str(path))
    built = set(backbone.stage_names)
    expected = backbone.state_dict()
    state = {
        k: v for k, v in state.items()
        if k.split(".")[1] in built and not (k.endswith("num_batches_tracked") and k not in expected)
    }
    load_state_dict(backbone, state, strict=True, source=str(path))
    return backbone
