"""torchvision VGG state dicts (features.<i>.*, classifier.{0,3,6}.*) -> our Classifier(vggN[_bn]) names.

torchvision's `features` is one flat Sequential: conv, [BN], ReLU, ..., MaxPool. We walk it with the per-depth
conv counts, so `features.<i>` of the k-th conv of block b becomes `backbone.stages.conv<b>.conv<b>_<k>` and its
BN (features.<i+1>) becomes `...conv<b>_<k>.norm`.
"""
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..layers.specs import VGG_DEPTH_TO_CONVS as DEPTH_TO_CONVS, VGG_STAGE_NAMES as STAGE_NAMES
from .errors import WeightsError

_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
# torchvision classifier: Linear(0) ReLU Dropout Linear(3) ReLU Dropout Linear(6).
_HEAD_LAYERS = {"0": "fc6", "3": "fc7", "6": "fc8"}
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_torchvision_vgg(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if the keys look like torchvision's VGG (features.<i>.weight + classifier.<i>.weight)."""
    return "features.0.weight" in state_dict and any(k.startswith("classifier.") for k in state_dict)


def infer_vgg_arch(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, bool]:
    """(depth, batch_norm) of a torchvision VGG state dict, from its conv count and BN running stats."""
    conv_indices = sorted(
        int(m.group(1)) for k, v in state_dict.items() if (m := _FEATURE_KEY.match(k)) and m.group(2) == "weight"
        and v.dim() == 4
    )
    batch_norm = any(k.startswith("features.") and k.endswith("running_mean") for k in state_dict)
    by_count = {sum(convs): depth for depth, convs in DEPTH_TO_CONVS.items()}
    if len(conv_indices) not in by_count:
        raise WeightsError(
            f"not a torchvision VGG state dict: found {len(conv_indices)} conv weights under features.*, expected one "
            f"of {', '.join(f'{n} (vgg{d})' for n, d in sorted(by_count.items()))}"
        )
    return by_count[len(conv_indices)], batch_norm


def _feature_index_map(depth: int, batch_norm: bool) -> Dict[int, Tuple[str, bool]]:
    """torchvision features index -> (our module path, is_norm) for every layer that has parameters."""
    mapping: Dict[int, Tuple[str, bool]] = {}
    index = 0
    for block, (stage, num_convs) in enumerate(zip(STAGE_NAMES, DEPTH_TO_CONVS[depth]), start=1):
        for conv in range(1, num_convs + 1):
            path = f"backbone.stages.{stage}.conv{block}_{conv}"
            mapping[index] = (path, False)
            index += 1
            if batch_norm:
                mapping[index] = (f"{path}.norm", True)
                index += 1
            index += 1  # ReLU
        index += 1  # MaxPool
    return mapping


def from_torchvision_vgg(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert torchvision vgg{11,13,16,19}[_bn] weights to our Classifier's state dict.

    Returns {"backbone.stages.convK.convK_j.{weight,bias}", "...norm.*" (BN), "head.fc{6,7,8}.*": tensor}.
    Load with `build_classifier("vgg16", num_classes=...)`; the depth and BN are inferred from the keys
    (see infer_vgg_arch). Raises WeightsError naming every key that has no counterpart.
    """
    depth, batch_norm = infer_vgg_arch(state_dict)
    index_map = _feature_index_map(depth, batch_norm)
    converted: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        target = None
        match = _FEATURE_KEY.match(key)
        if match:
            layer = index_map.get(int(match.group(1)))
            suffix = match.group(2)
            if layer is not None and (suffix in _BN_SUFFIXES if layer[1] else suffix in ("weight", "bias")):
                target = f"{layer[0]}.{suffix}"
        elif key.startswith("classifier."):
            _, layer_index, suffix = key.split(".", 2)
            if layer_index in _HEAD_LAYERS and suffix in ("weight", "bias"):
                target = f"head.{_HEAD_LAYERS[layer_index]}.{suffix}"
        if target is None:
            unknown.append(key)
        else:
            converted[target] = value
    if unknown:
        name = f"vgg{depth}{'_bn' if batch_norm else ''}"
        raise WeightsError(f"torchvision {name} state dict has keys with no counterpart in ours: {', '.join(unknown)}")
    return converted


def vgg_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Registered backbone name for a torchvision VGG state dict, e.g. "vgg16_bn"."""
    depth, batch_norm = infer_vgg_arch(state_dict)
    return f"vgg{depth}{'_bn' if batch_norm else ''}"


def infer_vgg_arch_converted(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Registered name ("vgg16", "vgg11_bn", ...) of a state dict in OUR names (backbone.stages.convK...), else None."""
    prefix = "backbone.stages."
    convs = {k.split(".")[3] for k in state_dict if k.startswith(prefix + "conv") and k.endswith(".weight")
             and state_dict[k].dim() == 4}
    per_stage = tuple(sum(1 for c in convs if c.startswith(f"conv{s}_")) for s in range(1, 6))
    depth = next((d for d, counts in DEPTH_TO_CONVS.items() if counts == per_stage), None)
    if depth is None:
        return None
    batch_norm = any(k.startswith(prefix) and k.endswith(".norm.running_mean") for k in state_dict)
    return f"vgg{depth}{'_bn' if batch_norm else ''}"
