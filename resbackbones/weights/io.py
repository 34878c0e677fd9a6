"""Read and write weights without running pickled code: safetensors, or torch files loaded with weights_only=True."""
import json
import os
import pickle
import pickletools
import struct
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..io.outputs import register_input, save_safetensors_atomic, save_torch_atomic
from .errors import WeightsError
from .integrity import (CHECKSUM_KEY, CorruptFile, check_dtypes, describe_bytes, load_torch_parallel_verified,
                        load_torch_verified, note_unverified,
                        state_checksum, verify_state_checksum)

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
    """Write weights to `path` atomically through resbackbones.io.outputs (temp file, fsync, rename; refused onto
    a file this command reads, or another run's files).

    `.safetensors` -> safetensors with `metadata` (str -> str) in its header, plus "rb.checksum" of the tensors;
    any other suffix -> torch.save of {"state_dict": ..., "metadata": ...} (its zip records carry CRC-32s), which
    load() reads back with weights_only=True. Either checksum is verified by every load (integrity.py).
    """

    state = {k: v.cpu() for k, v in _as_state_dict(model_or_state).items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if Path(path).suffix in SAFETENSORS_SUFFIXES:
        meta[CHECKSUM_KEY] = state_checksum(state)
        return save_safetensors_atomic(state, path, metadata=meta)
    meta.pop(CHECKSUM_KEY, None)  # a stale one copied from another file's metadata: the zip CRCs are the checksum
    return save_torch_atomic({"state_dict": state, "metadata": meta}, path)


_PICKLE_OPCODES = {op.code for op in pickletools.opcodes}  # a file starting with none of them is no pickle
_NOT_TORCH = "neither a torch zip file nor a pickle"


def _read_failure(path: Path, file_kind: str, detail: str, *, not_what: str = _NOT_TORCH) -> str:
    """One line for an unreadable file: what it is when that is plain (empty, zeros, text), else the reader's error."""
    looks = describe_bytes(path)
    if looks.startswith("it starts with the bytes"):  # binary, of no kind we recognise: the reader's reason says more
        return f"cannot read {file_kind} {path} (truncated or not a {file_kind}?): {detail}"
    return f"cannot read {file_kind} {path}: {looks}, {not_what}"


def _is_ours(obj) -> bool:
    """A torch file object written by this library: rb.weights.save's, or a train_cls / train_det checkpoint."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("metadata"), Mapping) and any(str(k).startswith("rb.") for k in obj["metadata"]):
        return True
    return isinstance(obj.get("model"), Mapping) and any(
        k in obj for k in ("task", "config", "global_iter", "label_to_category", "best_metric_name"))


def torch_load_refusing_code(
    path: PathLike,
    map_location: Union[str, torch.device] = "cpu",
    *,
    error: Type[Exception] = WeightsError,
    what: str = "",
    file_kind: str = "torch file",
    chain_read_errors: bool = True,
):
    """torch.load(path, weights_only=True), the one place where a torch file is read: pickled code is refused, the
    CRC-32 of every record is verified (integrity.load_torch_parallel_verified: records read in threads, each CRC
    computed as it is read; integrity.load_torch_verified where that way does not apply), the file is registered as
    an input of this command (resbackbones.io.outputs.register_input: no output may replace it).

    Raises `error` (WeightsError for weights, CheckpointError for training checkpoints) in one line naming the file:
    "refused to load <what><path>: ..." when it holds pickled objects other than tensors/containers (nothing is
    executed), "<file_kind> <path> is corrupted: ..." when a record differs from its CRC-32, and "cannot read
    <file_kind> <path>..." (what it is instead: empty, zeros, text, truncated) when it is unreadable. With
    chain_read_errors=False the torch error is not attached as the cause. A file of ours that carries no CRCs
    loads with one note on stderr.
    """

    path = Path(path)
    register_input(path)

    def load():
        with warnings.catch_warnings():  # a pickle of another protocol is refused below in one line, or read
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if path.suffix in SAFETENSORS_SUFFIXES:  # torch.load hands a path by that name to safetensors
                with open(path, "rb") as handle:
                    return torch.load(handle, map_location=map_location, weights_only=True)
            return torch.load(path, map_location=map_location, weights_only=True)

    try:
        obj = None
        if path.suffix not in SAFETENSORS_SUFFIXES and torch.device(map_location).type == "cpu":
            obj = load_torch_parallel_verified(path)  # None: not this way; the plain load below words any error
        obj, verified = (obj, True) if obj is not None else load_torch_verified(path, load)
    except CorruptFile as exc:
        raise error(f"{file_kind} {path} is corrupted: {exc}; nothing was loaded: use another copy") from None
    except pickle.UnpicklingError as exc:
        from .formats import numpy_pickle_format, unconverted_message

        with open(path, "rb") as handle:
            head = handle.read(2)
        if not head.startswith(b"PK") and head[:1].decode("latin-1") not in _PICKLE_OPCODES:  # text, garbage: no code
            raise error(_read_failure(path, file_kind, f"it is {_NOT_TORCH} ({path.stat().st_size} bytes)")) from None

        expected = "a training checkpoint" if file_kind == "checkpoint" else "converted weights"
        message = unconverted_message(path, numpy_pickle_format(path), expected=expected)
        if message is not None:  # a detectron2 / caffe2 pickle of numpy arrays: nothing unsafe, only unconverted
            raise error(message) from None
        raise error(
            f"refused to load {what}{path}: it carries pickled objects that are not plain tensors/containers, "
            f"and loading them could run code. Nothing was executed. Details: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise error(_read_failure(path, file_kind, str(exc).strip().splitlines()[0] if str(exc).strip() else
                                  type(exc).__name__)) from (exc if chain_read_errors else None)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, struct.error, UnicodeDecodeError) as exc:
        # torch's weights-only unpickler on bytes that only look like a pickle (text: "KeyError: 101")
        raise error(_read_failure(path, file_kind, f"{type(exc).__name__}: {exc}")) from None
    if not verified and _is_ours(obj):
        note_unverified(path, "checkpoint" if file_kind == "checkpoint" else "weights file")
    return obj


def _read_safetensors(path: Path, map_location: Union[str, torch.device]) -> Tuple[StateDict, Dict[str, str]]:
    register_input(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            meta = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        with open(path, "rb") as probe:
            head = probe.read(4)
        if head == b"PK\x03\x04" or head[:1] == b"\x80":
            # a torch file (or a pickle) under a .safetensors name: read it as what it is, code refused there
            return _unwrap(torch_load_refusing_code(path, map_location), path)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(_read_failure(path, "safetensors file", detail, not_what="not a safetensors file")) from None
    if not verify_state_checksum(state, meta, path) and any(key.startswith("rb.") for key in meta):
        note_unverified(path, "weights file")
    return state, meta


def load_with_metadata(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Tuple[StateDict, Dict[str, str]]:
    """Read (state_dict, metadata) from a safetensors or torch file; never executes pickled code.

    A torch file may be a bare state dict or a dict holding one under "state_dict"/"model" (training checkpoints).
    Every tensor must be floating point (integer num_batches_tracked aside: integrity.check_dtypes) and match the
    file's checksum. Raises WeightsError in one line naming the file if it is missing, unreadable, corrupted,
    holds non-float weights, or carries pickled objects other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        state, meta = _read_safetensors(path, map_location)
    else:
        state, meta = _unwrap(torch_load_refusing_code(path, map_location), path)
    check_dtypes(state, path)
    return state, meta


def metadata_of(obj) -> Dict[str, str]:
    """The "metadata" dict of a torch file object (rb.weights.save's) as str -> str, {} when it has none. Values
    that are not strings are JSON-encoded: a hand-written {"rb.stride_in_1x1": False} is the boolean false, which
    str() would have made the string "False"."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj["metadata"].items()}


def _unwrap(obj, path: Path) -> Tuple[StateDict, Dict[str, str]]:
    meta = metadata_of(obj)
    if isinstance(obj, dict):
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
