"""akamaster/pytorch_resnet_cifar10 checkpoints -> our Classifier(cifar_resnetN) state dicts.

Their names (under `module.`, from nn.DataParallel):
    conv1, bn1                        -> backbone.stages.stem.conv1, backbone.stages.stem.conv1.norm
    layer{k}.{i}.conv{j}, .bn{j}      -> backbone.stages.res{k+1}.{i}.conv{j}, ....conv{j}.norm
    layer{k}.{i}.shortcut.0 / .1      -> backbone.stages.res{k+1}.{i}.shortcut, ....shortcut.norm  (option B only)
    linear                            -> head.fc
Their option-A shortcut, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)), has no parameters and
is exactly layers.blocks.ZeroPadShortcut, so the published checkpoints load strictly into shortcut="A" models.
"""
import os
import re
from typing import Any, Dict, Mapping, Tuple, Union

import torch

from .errors import WeightsError

# The published checkpoints were trained on [0, 1] RGB normalised with ImageNet statistics (their trainer.py).
CIFAR_PREPROCESSING = {
    "color_order": "RGB",
    "input_range": "0-1",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}
# What is known about each published file (../shared/weights/cifar10/SOURCE.md): the arch to build, the test
# accuracy on the original CIFAR-10 test set (best_prec1) and on the q75 JPEG test set in ../shared/data/cifar10.
PUBLISHED_CHECKPOINTS: Dict[str, Dict[str, Any]] = {
    "resnet20-12fca82f.th": {"arch": "cifar_resnet20", "top1": 91.78, "top1_jpeg_q75": 81.03},
    "resnet32-d509ac18.th": {"arch": "cifar_resnet32", "top1": 92.78, "top1_jpeg_q75": 82.56},
    "resnet44-014dd654.th": {"arch": "cifar_resnet44", "top1": 93.14, "top1_jpeg_q75": 82.67},
    "resnet56-4bfd9763.th": {"arch": "cifar_resnet56", "top1": 93.62, "top1_jpeg_q75": 83.20},
}
REGISTERED_DEPTHS = (20, 32, 44, 56, 110, 1202)

_BLOCK = re.compile(r"^layer([123])\.(\d+)\.(conv|bn)([12])\.(.+)$")
_SHORTCUT = re.compile(r"^layer([123])\.(\d+)\.shortcut\.([01])\.(.+)$")
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _state_dict_of(source: Union[Mapping[str, Any], str, os.PathLike]) -> Dict[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        from .io import load  # weights_only=True; unwraps {"state_dict": ...}

        source = load(source)
    if "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]  # the raw checkpoint: {"state_dict": ..., "best_prec1": ...}
    state = {k: v for k, v in source.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"CIFAR checkpoint entries are not tensors: {', '.join(bad[:10])}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_cifar_arch(source: Union[Mapping[str, Any], str, os.PathLike]) -> Tuple[str, Dict[str, Any]]:
    """(backbone name, builder options) for an akamaster-style CIFAR ResNet checkpoint.

    E.g. ("cifar_resnet56", {}) or ("cifar_resnet", {"depth": 8}); {"shortcut": "B"} when it has projection
    shortcuts. Raises WeightsError if the stages have unequal block counts or the keys are not of this layout.
    """
    state = _state_dict_of(source)
    if "conv1.weight" not in state or "linear.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise WeightsError(
            "not a CIFAR ResNet checkpoint (akamaster layout): expected keys conv1.weight, layer1.0.conv1.weight, "
            f"linear.weight (optionally under module.); first keys found: {', '.join(list(state)[:5])}"
        )
    counts = []
    for stage in (1, 2, 3):
        blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        if blocks != set(range(len(blocks))):
            raise WeightsError(f"CIFAR checkpoint: layer{stage} has non-contiguous block indices {sorted(blocks)}")
        counts.append(len(blocks))
    if len(set(counts)) != 1 or counts[0] == 0:
        raise WeightsError(
            f"CIFAR checkpoint has {counts[0]}/{counts[1]}/{counts[2]} blocks in layer1/layer2/layer3; a depth-6n+2 "
            f"CIFAR ResNet has n in each"
        )
    depth = 6 * counts[0] + 2
    options: Dict[str, Any] = {}
    if any(_SHORTCUT.match(k) for k in state):
        options["shortcut"] = "B"
    if depth in REGISTERED_DEPTHS:
        return f"cifar_resnet{depth}", options
    return "cifar_resnet", {"depth": depth, **options}


def _rename(key: str) -> Union[str, None]:
    if key.startswith("conv1."):
        return "backbone.stages.stem." + key
    if key.startswith("bn1."):
        return "backbone.stages.stem.conv1.norm." + key[len("bn1."):]
    if key.startswith("linear."):
        return "head.fc." + key[len("linear."):]
    match = _BLOCK.match(key)
    if match:
        stage, block, kind, index, suffix = match.groups()
        prefix = f"backbone.stages.res{int(stage) + 1}.{block}.conv{index}"
        if kind == "conv":
            return f"{prefix}.{suffix}" if suffix in ("weight", "bias") else None
        return f"{prefix}.norm.{suffix}" if suffix in _BN_SUFFIXES else None
    match = _SHORTCUT.match(key)
    if match:
        stage, block, index, suffix = match.groups()
        prefix = f"backbone.stages.res{int(stage) + 1}.{block}.shortcut"
        return f"{prefix}.{suffix}" if index == "0" else f"{prefix}.norm.{suffix}"
    return None


def from_cifar_checkpoint(
    source: Union[Mapping[str, Any], str, os.PathLike], *, expected_arch: Union[str, None] = None
) -> Dict[str, torch.Tensor]:
    """Convert an akamaster CIFAR ResNet checkpoint to our Classifier's state dict.

    source: the checkpoint dict ({"state_dict": ..., "best_prec1": ...}), its state dict (with or without the
    `module.` prefix) or a path (read with weights_only=True). Load the result strictly into
    build_classifier(*infer_cifar_arch(source)) with num_classes = linear.weight.shape[0] (10); inputs are
    [0, 1] RGB normalised by CIFAR_PREPROCESSING's ImageNet mean/std.
    expected_arch: e.g. "cifar_resnet20"; a checkpoint of another depth raises WeightsError naming both.
    """
    state = _state_dict_of(source)
    arch, options = infer_cifar_arch(state)
    if expected_arch is not None:
        expected = expected_arch if expected_arch.startswith("cifar_") else f"cifar_{expected_arch}"
        found = arch if "depth" not in options else f"cifar_resnet{options['depth']}"
        if expected != found:
            blocks = (int(found.rsplit("resnet", 1)[-1]) - 2) // 6
            raise WeightsError(
                f"CIFAR checkpoint is a {found} ({blocks} blocks per stage), not the expected {expected_arch}"
            )
    converted: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        new_key = _rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise WeightsError(f"CIFAR checkpoint ({arch}) has keys with no counterpart here: {', '.join(unknown)}")
    return converted
