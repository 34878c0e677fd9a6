"""Which converter a file needs, for the errors of loaders that take converted weights or training checkpoints.

rb.build_backbone(weights=...) converts torchvision / detectron2 / caffe2 / CIFAR files on the fly (resolve.py). The
strict loaders do not: rb.weights.load_into, training checkpoints (train_cls --resume, train_det --eval-only
--weights, predict / eval_coco --checkpoint). Given an unconverted file they would report a hundred missing keys
or "pickled objects"; unconverted_message() recognises the layout and names the command that converts it.
"""
from pathlib import Path
from typing import Any, Mapping, Optional

FORMAT_NAMES = {"torchvision": "torchvision classification", "detectron2": "detectron2 / caffe2 model-zoo",
                "cifar": "akamaster CIFAR ResNet"}


def raw_state(obj: Any) -> Mapping:
    """The tensor dict inside a file object: under "state_dict" / "model" / "blobs" or the object itself."""
    if not isinstance(obj, Mapping):
        return {}
    for key in ("state_dict", "model", "blobs"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def sniff_format(obj: Any) -> Optional[str]:
    """"torchvision" | "detectron2" | "cifar" when `obj` (a file object or state dict) holds weights under another
    library's names, the tools/convert_weights.py --from value that converts them; None for ours or unknown."""
    keys = [str(k) for k in raw_state(obj)]
    if keys and all(k.startswith("module.") for k in keys):  # (Distributed)DataParallel
        keys = [k[len("module."):] for k in keys]
    if not keys or any("stages." in k for k in keys):  # ours: backbone.stages.*, backbone.body.stages.*, stages.*
        return None
    names = set(keys)
    if "conv1.weight" in names and "layer1.0.conv1.weight" in names:
        cifar = "linear.weight" in names and not any(k.startswith("layer4.") for k in keys)
        return "cifar" if cifar else "torchvision"
    if "features.0.weight" in names and any(k.startswith("classifier.") for k in keys):
        return "torchvision"  # VGG
    if any(k.startswith(("backbone.bottom_up.", "stem.conv1.", "res2.", "conv1_w", "res_conv1_bn_s")) for k in keys):
        return "detectron2"
    return None


def convert_command(path, fmt: str) -> str:
    """The tools/convert_weights.py command line that converts `path` (a `fmt` file) next to itself."""
    path = Path(path)
    out = path.with_name(path.stem + (".converted" if path.suffix == ".safetensors" else "") + ".safetensors")
    return f"python tools/convert_weights.py --from {fmt} {path} {out}"


def unconverted_message(path, fmt: Optional[str], *, expected: str = "converted weights") -> Optional[str]:
    """One line for a `fmt` file found where `expected` belongs; None when fmt is None."""
    if fmt is None:
        return None
    # resolve_weights reads these layouts as they are (a detectron2 pickle by its .pkl suffix).
    as_is = fmt != "detectron2" or Path(path).suffix == ".pkl"
    return (f"{path} is an unconverted {FORMAT_NAMES[fmt]} checkpoint, not {expected}: convert it first: "
            f"{convert_command(path, fmt)}" + (" (model.backbone.weights and rb.build_backbone(weights=...) read "
                                               "it as is)" if as_is else ""))


def numpy_pickle_format(path) -> Optional[str]:
    """"detectron2" when `path` is a pickle of numpy arrays in a detectron2 / caffe2 layout (read with the
    numpy-only unpickler: nothing else is constructed); None otherwise."""
    from .convert_detectron2 import read_pickle
    from .errors import WeightsError

    try:
        obj = read_pickle(path)
    except (WeightsError, OSError, ValueError):
        return None
    fmt = sniff_format(obj)
    if fmt is None and isinstance(obj, Mapping) and any(str(k).endswith(("_w", "_b", "_s")) for k in raw_state(obj)):
        fmt = "detectron2"  # caffe2 blob names of another layout: the detectron2 converter is still the one to try
    return fmt
