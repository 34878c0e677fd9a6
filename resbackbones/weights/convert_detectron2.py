"""detectron2 model-zoo checkpoints -> our Classifier state dicts, without running pickled code.

Accepted inputs (a .pkl path, or an already-read dict):
- model-zoo .pkl: a pickled dict of numpy arrays, possibly under "model" (or "blobs"), with either detectron2
  names (`stem.conv1.weight`, `res2.0.conv1.norm.running_mean`, `res2.0.shortcut.weight`) or raw caffe2 names
  (`conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`, `res2_0_branch1_bn_b`, `fc1000_w`), renamed with the same
  rules as detectron2's c2_model_loading.convert_basic_c2_names;
- detectron2 training checkpoints / backbone state dicts (`backbone.bottom_up.res2...` or `backbone.res2...`).
Output keys: `backbone.stages.<stem|resK>...` and, when the file has an ImageNet head (fc1000 / linear), `head.fc.*`.
Caffe2 BN blobs carry only scale and bias (`_bn_s`, `_bn_b`): they become FrozenBN with mean 0 / var 1, as
detectron2 does. Detection heads (RPN, RoI, FPN) are left out: only the ResNet backbone is converted.
"""
import io
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import numpy as np
import torch

try:  # numpy >= 2 moved the pickling helpers to numpy._core (numpy.core still works, with a warning)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

from ..io.outputs import register_input
from .errors import WeightsError

# Globals a pickle of numpy arrays needs, and nothing that can run code: ndarray/dtype reconstruction and the
# latin-1 bytes shim Python 3 uses for protocol-2 bytes (_codecs.encode only encodes a string).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _multiarray.scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals above; anything else raises before it can be called."""

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED_GLOBALS.get((module, name))
        if resolver is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return resolver()


def read_pickle(path: Union[str, Path]) -> Any:
    """Unpickle a detectron2/caffe2 .pkl allowing numpy arrays only. Raises WeightsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")

    register_input(path)
    try:
        with open(path, "rb") as handle:
            # latin1: the model zoo's caffe2 files were pickled by Python 2.
            return _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError,
            MemoryError) as error:
        from .integrity import describe_bytes

        looks = describe_bytes(path)
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                looks = "it is a torch zip file (give it a .pth name)"
        if not looks.startswith("it starts with the bytes"):  # empty, zeros, text, torch zip: no numpy pickle
            raise WeightsError(f"cannot read {path}: {looks}, not a detectron2 .pkl (a pickle of numpy "
                               f"arrays)") from None
        detail = " ".join(str(error).split())
        if isinstance(error, pickle.UnpicklingError):
            raise WeightsError(
                f"refused to load {path}: it is not a pickle of numpy arrays only ({detail}); loading it could run "
                f"code, so nothing was executed"
            ) from None
        raise WeightsError(f"cannot read {path} as a detectron2 .pkl (truncated or another format?): "
                           f"{type(error).__name__}: {detail}") from None


def _c2_to_detectron2(name: str) -> str:
    """caffe2 blob name -> detectron2 name (convert_basic_c2_names' rules that concern a ResNet backbone)."""
    key = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name).replace("_", ".")
    for pattern, repl in (
        (r"\.b$", ".bias"), (r"\.w$", ".weight"),
        (r"bn\.s$", "norm.weight"), (r"bn\.bias$", "norm.bias"), (r"bn\.rm", "norm.running_mean"),
        (r"bn\.running\.mean$", "norm.running_mean"), (r"bn\.riv$", "norm.running_var"),
        (r"bn\.running\.var$", "norm.running_var"), (r"bn\.gamma$", "norm.weight"), (r"bn\.beta$", "norm.bias"),
        (r"gn\.s$", "norm.weight"), (r"gn\.bias$", "norm.bias"),
        (r"^res\.conv1\.norm\.", "conv1.norm."), (r"^conv1\.", "stem.conv1."),
    ):
        key = re.sub(pattern, repl, key)
    for old, new in ((".branch1.", ".shortcut."), (".branch2a.", ".conv1."), (".branch2b.", ".conv2."),
                     (".branch2c.", ".conv3.")):
        key = key.replace(old, new)
    return key


_BACKBONE_KEY = re.compile(r"^(?:backbone\.(?:bottom_up\.)?)?((?:stem|res[2-5])\..+)$")
_HEAD_KEY = re.compile(r"^(?:fc1000|linear|fc)\.(weight|bias)$")


def _is_caffe2_names(keys) -> bool:
    return any(k in ("conv1_w", "res_conv1_bn_s") or re.match(r"^res\d_\d+_branch", k) for k in keys)


def _extract_weights(obj: Any, source: str) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a dict of arrays, found {type(obj).__name__}")
    for key in ("model", "blobs"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    # caffe2 files also carry optimizer momentum blobs; detectron2 drops them too.
    return {k: v for k, v in obj.items() if isinstance(v, (np.ndarray, torch.Tensor)) and not k.endswith("_momentum")}


def from_detectron2(checkpoint: Union[str, Path, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """Convert a detectron2/caffe2 ResNet checkpoint (path to .pkl/.pth, or a dict) to our Classifier's names.

    Load into rb.build_classifier("resnet50", stride_in_1x1=True, norm="FrozenBN") for MSRA caffe2 weights
    (BGR, 0-255 input), or strip "backbone." for a backbone. Raises WeightsError if no ResNet keys are found.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "detectron2 checkpoint"
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if path.suffix == ".pkl":
            obj = read_pickle(path)
        else:
            from .io import load  # torch file: weights_only loading

            obj = load(path)
    else:
        obj = checkpoint
    weights = _extract_weights(obj, source)
    if _is_caffe2_names(weights):
        weights = {_c2_to_detectron2(k): v for k, v in weights.items()}
    converted: Dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if isinstance(value, np.ndarray) and value.dtype.kind not in "fiub":
            raise WeightsError(f"{source}: entry {key!r} is a numpy array of dtype {value.dtype}, not numbers")
        tensor = torch.as_tensor(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if key.endswith("num_batches_tracked"):
            continue
        match = _BACKBONE_KEY.match(key)
        head = _HEAD_KEY.match(key)
        if match:
            converted[f"backbone.stages.{match.group(1)}"] = tensor
        elif head:
            converted[f"head.fc.{head.group(1)}"] = tensor
    if not any(k.startswith("backbone.") for k in converted):
        raise WeightsError(
            f"{source}: no ResNet backbone keys found (expected stem.conv1.weight / res2.0.conv1.weight, caffe2 "
            f"conv1_w / res2_0_branch2a_w, or backbone.bottom_up.res2...); first keys: {', '.join(list(weights)[:5])}"
        )
    _fill_missing_bn_stats(converted)
    return converted


def _fill_missing_bn_stats(state: Dict[str, torch.Tensor]) -> None:
    # Caffe2 "affine channel" BN: scale and bias only; mean 0 / var 1 make FrozenBN compute exactly x * s + b
    # (up to eps, as in detectron2).
    for key in [k for k in state if k.endswith(".norm.weight")]:
        prefix = key[: -len("weight")]
        if prefix + "running_mean" not in state:
            state[prefix + "running_mean"] = torch.zeros_like(state[key])
        if prefix + "running_var" not in state:
            state[prefix + "running_var"] = torch.ones_like(state[key])


def to_caffe2_names(state: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Our Classifier state dict -> caffe2 blob names (the inverse of the renaming above), as numpy arrays.

    Used to build model-zoo-like files (tests, export to caffe2-era tools); BN running stats are written as
    `_bn_rm` / `_bn_riv`.
    """
    out: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = key.replace("backbone.stages.", "")
        name = name.replace("head.fc.", "fc1000.")
        name = re.sub(r"^stem\.conv1\.norm\.", "res_conv1.norm.", name)
        name = re.sub(r"^stem\.conv1\.", "conv1.", name)
        for old, new in ((".shortcut.", ".branch1."), (".conv1.", ".branch2a."), (".conv2.", ".branch2b."),
                         (".conv3.", ".branch2c.")):
            name = name.replace(old, new)
        name = name.replace("norm.", "bn.")
        for suffix, c2 in ((".bn.weight", "_bn_s"), (".bn.bias", "_bn_b"), (".bn.running_mean", "_bn_rm"),
                           (".bn.running_var", "_bn_riv"), (".weight", "_w"), (".bias", "_b")):
            if name.endswith(suffix):
                name = name[: -len(suffix)] + c2
                break
        out[name.replace(".", "_")] = value.detach().cpu().numpy()
    return out
