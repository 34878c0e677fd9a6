"""Any weights reference -> (our Classifier state dict, WeightsMetadata): the one place that knows the formats.

    resolved = resolve_weights("torchvision:IMAGENET1K_V2", arch="resnet50")
    resolved.backbone_state   # {"stages.stem.conv1.weight": ..., ...}   what rb.build_backbone(arch) holds
    resolved.head_state       # {"fc.weight": ..., ...}                  the classifier head, if the file has one
    resolved.metadata         # WeightsMetadata (input format, mean/std, stride_in_1x1, ...) or None if unknown

References accepted (files are read without running pickled code):
  torchvision:<ENUM>            torchvision's Weights enum for `arch` (torchvision_hub.py: cache, download rule)
  *.pkl                         detectron2 model zoo (caffe2 or detectron2 names)
  *.safetensors / torch file    our weights (Backbone `stages.*` or Classifier `backbone.stages.*`, rb.* metadata),
                                a tools/train_cls.py checkpoint (OUTPUT/checkpoints/last.pt: "model", EMA if kept),
                                a torchvision ResNet/VGG state dict, a torchvision or our detector (backbone part),
                                a detectron2 .pth, an akamaster CIFAR checkpoint (.th)
Metadata: the file's own rb.* keys first; else what its format implies (torchvision: RGB ImageNet; detectron2
MSRA: BGR 0-255, stride in 1x1; train_cls checkpoint: its config's mean/std); else None (nothing to check).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .convert import convert, infer_arch
from .convert_vgg import infer_vgg_arch_converted
from .checkpoint import TrainingCheckpoint
from .errors import WeightsError
from .integrity import check_dtypes
from .io import load_with_metadata, metadata_of, torch_load_refusing_code
from .metadata import WeightsMetadata
from .torchvision_hub import PREFIX, is_torchvision_reference, resolve_torchvision

StateDict = Dict[str, torch.Tensor]
Reference = Union[str, os.PathLike]
ACCEPTED = ("torchvision:<ENUM>, our .safetensors/.pt (backbone or classifier), a tools/train_cls.py checkpoint, "
            "a torchvision ResNet/VGG or R-CNN state dict, a detectron2 .pkl/.pth, an akamaster CIFAR checkpoint")


@dataclass
class ResolvedWeights:
    """state: our Classifier names (backbone.stages.* and, when the file has a classifier head, head.*).
    source: how messages name it (the path, or "torchvision:ResNet50_Weights.IMAGENET1K_V2 (<cached file>)")."""

    state: StateDict
    metadata: Optional[WeightsMetadata]
    source: str

    @property
    def backbone_state(self) -> StateDict:
        return {k[len("backbone."):]: v for k, v in self.state.items() if k.startswith("backbone.")}

    @property
    def head_state(self) -> StateDict:
        return {k[len("head."):]: v for k, v in self.state.items() if k.startswith("head.")}

    @property
    def arch(self) -> Optional[str]:
        """Registered backbone name the weights are for: recorded, else inferred from the keys, else None."""
        if self.metadata is not None and self.metadata.arch != "unknown":
            return self.metadata.arch
        return infer_arch(self.state) or infer_vgg_arch_converted(self.state)


def resolve_weights(reference: Union[Reference, ResolvedWeights], *, arch: Optional[str] = None,
                    download: Optional[bool] = None) -> ResolvedWeights:
    """Read `reference` (see module doc) into our names with its metadata. Raises WeightsError (one line).

    arch: the backbone the weights are for; required for "torchvision:<ENUM>" (it picks the enum).
    download: for torchvision references only; None = allowed unless $RESBACKBONES_OFFLINE=1.
    """
    if isinstance(reference, ResolvedWeights):
        return reference
    if is_torchvision_reference(reference):
        enum_name = str(reference)[len(PREFIX):]
        if arch is None:
            raise WeightsError(f"{reference!r} needs the architecture: rb.build_backbone(<arch>, weights=...)")
        state, meta, path = resolve_torchvision(arch, enum_name, download=download)
        return ResolvedWeights(state, meta, f"{PREFIX}{meta.extra['torchvision_weights']} ({path})")
    if not isinstance(reference, (str, os.PathLike)) or not str(reference):
        raise WeightsError(f"weights must be a file path or 'torchvision:<ENUM>', got {reference!r}")
    path = Path(reference)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".pkl":
        state, meta = convert("detectron2", path)
        return ResolvedWeights(state, meta, str(path))
    if path.suffix == ".safetensors":
        state, raw_meta = load_with_metadata(path)
        obj: Any = state
    else:
        obj = torch_load_refusing_code(path)
        raw_meta = metadata_of(obj)
    recorded = WeightsMetadata.from_dict(raw_meta or {}, source=str(path))
    state, implied = _to_classifier_names(obj, source=str(path))
    check_dtypes(state, path)  # our own layouts are not converted, so nothing else looks at their dtypes
    return ResolvedWeights(state, recorded or implied, str(path))


def _unwrap(obj: Any, source: str) -> Tuple[Mapping[str, Any], Optional[WeightsMetadata]]:
    """The state dict inside a file object, and what a tools/train_cls.py checkpoint says about its inputs."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} does not hold a state dict (found {type(obj).__name__}); accepted: {ACCEPTED}")
    if isinstance(obj.get("model"), Mapping) and isinstance(obj.get("config"), Mapping):
        checkpoint = TrainingCheckpoint.of(obj, source)  # a training checkpoint, any layout either task wrote
        # train_cls evaluates and exports the EMA weights when it keeps them
        return checkpoint.ema_state or checkpoint.model_state, checkpoint.metadata
    for key in ("state_dict", "model"):  # rb.weights.save's torch files, CIFAR .th, detector checkpoints, d2 .pth
        if isinstance(obj.get(key), Mapping):
            return obj[key], None
    return obj, None


def _strip(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _to_classifier_names(obj: Any, *, source: str) -> Tuple[StateDict, Optional[WeightsMetadata]]:
    """Sniff the layout by its keys and rename to backbone.stages.* (+ head.*); metadata the layout implies."""
    state, implied = _unwrap(obj, source)
    if state and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")  # (Distributed)DataParallel
    if any(k.startswith("backbone.body.") for k in state):
        state = _strip(state, "backbone.body.")  # a detector: ours (stages.*) or torchvision's (conv1, layer1...)
    keys = set(state)
    if any(k.startswith("backbone.stages.") for k in keys):
        return dict(state), implied
    if any(k.startswith("stages.") for k in keys):
        return {"backbone." + k: v for k, v in state.items() if k.startswith("stages.")}, implied
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        # akamaster's CIFAR ResNets share torchvision's stem names but have three stages and a `linear` head.
        kind = "cifar" if "linear.weight" in keys and "layer4.0.conv1.weight" not in keys else "torchvision"
        return convert(kind, dict(state))
    if "features.0.weight" in keys:
        return convert("torchvision", dict(state))
    if any(k.startswith(("backbone.bottom_up.", "stem.", "res2.", "conv1_w", "res_conv1_bn_s")) for k in keys):
        # The whole file object: detectron2's converter reads its __author__ (torchvision-style or MSRA weights).
        return convert("detectron2", obj if isinstance(obj, Mapping) and "__author__" in obj else dict(state))
    raise WeightsError(f"{source}: unrecognised weights layout (first keys: {', '.join(list(state)[:5])}); "
                       f"accepted: {ACCEPTED}")
