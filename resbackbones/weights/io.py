"""Read and write weights without running pickled code: safetensors, or torch files loaded with weights_only=True."""
import os
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import WeightsError

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]
SAFETENSORS_SUFFIXES = (".safetensors",)


def _as_state_dict(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]]) -> StateDict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"state dict entries are not tensors: {', '.join(bad[:10])}")
    # safetensors refuses views sharing storage; contiguous copies make every entry self-contained.
    return {k: v.detach().contiguous().clone() if v.storage_offset() or not v.is_contiguous() else v.detach()
            for k, v in state.items()}


def save(
    model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
    path: PathLike,
    metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write weights to `path` atomically (temp file, fsync, rename).

    `.safetensors` -> safetensors with `metadata` (str -> str) in its header; any other suffix -> torch.save of
    {"state_dict": ..., "metadata": ...}, which load() reads back with weights_only=True.
    """
    path = Path(path)
    state = _as_state_dict(model_or_state)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata=meta)
        else:
            torch.save({"state_dict": {k: v.cpu() for k, v in state.items()}, "metadata": meta}, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_PICKLE_OPCODES = {op.code for op in pickletools.opcodes}  # a file starting with none of them is no pickle


def torch_load_refusing_code(
    path: PathLike,
    map_location: Union[str, torch.device] = "cpu",
    *,
    error: Type[Exception] = WeightsError,
    what: str = "",
    file_kind: str = "torch file",
    chain_read_errors: bool = True,
):
    """torch.load(path, weights_only=True), the one place where a file carrying pickled code is refused.

    Raises `error` (WeightsError for weights, CheckpointError for training checkpoints) with one refusal message,
    "refused to load <what><path>: ...", when the file holds pickled objects other than tensors/containers
    (nothing is executed), and "cannot read <file_kind> <path> (truncated or not a <file_kind>?): ..." when it is
    unreadable; with chain_read_errors=False the torch error is not attached as the cause.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # a pickle of another protocol is refused below in one line, or read
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        from .formats import numpy_pickle_format, unconverted_message

        with open(path, "rb") as handle:
            head = handle.read(2)
        if not head.startswith(b"PK") and head[:1].decode("latin-1") not in _PICKLE_OPCODES:  # text, garbage: no code
            raise error(f"cannot read {file_kind} {path} (truncated or not a {file_kind}?): it is neither a torch "
                        f"zip file nor a pickle ({path.stat().st_size} bytes)") from None

        expected = "a training checkpoint" if file_kind == "checkpoint" else "converted weights"
        message = unconverted_message(path, numpy_pickle_format(path), expected=expected)
        if message is not None:  # a detectron2 / caffe2 pickle of numpy arrays: nothing unsafe, only unconverted
            raise error(message) from None
        raise error(
            f"refused to load {what}{path}: it carries pickled objects that are not plain tensors/containers, "
            f"and loading them could run code. Nothing was executed. Details: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise error(f"cannot read {file_kind} {path} (truncated or not a {file_kind}?): {exc}") from (
            exc if chain_read_errors else None)


def load_with_metadata(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Tuple[StateDict, Dict[str, str]]:
    """Read (state_dict, metadata) from a safetensors or torch file; never executes pickled code.

    A torch file may be a bare state dict or a dict holding one under "state_dict"/"model" (training checkpoints).
    Raises WeightsError naming the file if it is missing, unreadable, or carries pickled objects other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            state = load_file(str(path), device=str(map_location))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"cannot read safetensors file {path}: {error}") from error
        return state, meta
    obj = torch_load_refusing_code(path, map_location)
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> Tuple[StateDict, Dict[str, str]]:
    meta: Dict[str, str] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("metadata"), dict):
            meta = {str(k): str(v) for k, v in obj["metadata"].items()}
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return dict(obj), meta


def load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> StateDict:
    """Read a state dict from a safetensors or torch file (weights_only); see load_with_metadata."""
    return load_with_metadata(path, map_location)[0]
