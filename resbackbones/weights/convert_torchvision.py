"""torchvision ResNet / ResNeXt / Wide ResNet (and VGG) state dicts -> our Classifier state dicts.

ResNet names:  conv1, bn1                     -> backbone.stages.stem.conv1, backbone.stages.stem.conv1.norm
               layer{k}.{i}.conv{j}, .bn{j}   -> backbone.stages.res{k+1}.{i}.conv{j}, ....conv{j}.norm
               layer{k}.{i}.downsample.0 / .1 -> backbone.stages.res{k+1}.{i}.shortcut, ....shortcut.norm
               fc                             -> head.fc
num_batches_tracked is dropped (BatchNorm fills it in; FrozenBN has none). torchvision ResNets put the stride in
the 3x3 conv, so the weights only fit models built with stride_in_1x1=False (the default); metadata says so.
"""
import re
from typing import Dict, Mapping, Optional

import torch

from .errors import WeightsError

_RULES = (
    (re.compile(r"^conv1\.(.+)$"), r"backbone.stages.stem.conv1.\1"),
    (re.compile(r"^bn1\.(.+)$"), r"backbone.stages.stem.conv1.norm.\1"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.(.+)$"), None),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(.+)$"), None),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.(.+)$"), None),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(.+)$"), None),
    (re.compile(r"^fc\.(.+)$"), r"head.fc.\1"),
)


def _rename(key: str) -> Optional[str]:
    for pattern, target in _RULES:
        match = pattern.match(key)
        if not match:
            continue
        if target is not None:
            return match.expand(target)
        stage, block = int(match.group(1)) + 1, match.group(2)
        prefix = f"backbone.stages.res{stage}.{block}"
        if ".conv" in key:
            return f"{prefix}.conv{match.group(3)}.{match.group(4)}"
        if ".bn" in key:
            return f"{prefix}.conv{match.group(3)}.norm.{match.group(4)}"
        if ".downsample.0." in key:
            return f"{prefix}.shortcut.{match.group(3)}"
        return f"{prefix}.shortcut.norm.{match.group(3)}"
    return None


def is_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ResNet/ResNeXt/Wide-ResNet or VGG state dict to our Classifier's names.

    Load the result with rb.build_classifier(<arch>).load_state_dict(...) (strict). Raises WeightsError naming
    every key that belongs to neither family.
    """
    state_dict = _strip_module_prefix(state_dict)
    if any(k.startswith("features.") for k in state_dict):
        from .convert_vgg import from_torchvision_vgg  # written alongside the VGG family

        return from_torchvision_vgg(state_dict)
    if not is_torchvision_resnet(state_dict):
        raise WeightsError(
            "not a torchvision ResNet or VGG state dict: expected keys like conv1.weight + layer1.0.conv1.weight "
            f"(ResNet) or features.0.weight (VGG); first keys found: {', '.join(list(state_dict)[:5])}"
        )
    converted: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = _rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise WeightsError(f"torchvision ResNet state dict has keys with no counterpart here: {', '.join(unknown)}")
    return converted


def detector_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a torchvision R-CNN state dict (fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, ...: a ResNet-FPN
    backbone) to rb.build_detector's names (layout "fpn").

    backbone.body.* (the ResNet) is renamed as from_torchvision does, to backbone.body.stages.*; the FPN, RPN and
    RoI heads are torchvision's own modules in both models, so their keys stay. Raises WeightsError when the state
    dict has no backbone.body.* keys.
    """
    state_dict = _strip_module_prefix(state_dict)
    prefix = "backbone.body."
    body = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not body:
        raise WeightsError("not a torchvision R-CNN state dict: no backbone.body.* keys; first keys found: "
                           f"{', '.join(list(state_dict)[:5])}")
    converted = {prefix + k[len("backbone."):]: v for k, v in from_torchvision(body).items()}
    converted.update({k: v for k, v in state_dict.items() if not k.startswith(prefix)})
    return converted


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # (Distributed)DataParallel checkpoints prefix every key with "module.".
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)
