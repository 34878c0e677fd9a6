"""Is a weights or checkpoint file what it claims to be? Checksums, dtypes, and one line for an unreadable file.

    obj, verified = load_torch_verified(path, lambda: torch.load(path, weights_only=True))   # CRC-32 per record
    meta[CHECKSUM_KEY] = state_checksum(state)           # safetensors: written by rb.weights.save
    verify_state_checksum(state, meta, path)             # ... and checked by every load
    check_dtypes(state, path, expected=model.state_dict())   # int8 / bool where the model holds float: refused

Checksums. torch.save's zip format already stores a CRC-32 of every record (each tensor's bytes, the pickle), but
torch.load never checks them (its zip reader is built without CRC checks), so a checkpoint with a block of zeros
inside a tensor loads as if nothing happened. load_torch_verified checks every record against its CRC-32 while
torch.load reads it, and hands nothing out before the check passed: saving costs nothing beyond what torch.save
already does (it computes the CRCs by default), loading one crc32 pass over the file, overlapped with the load
(benchmarks/checkpoint_checksum.py measured this, torch.save without its CRCs, and the sha256, blake2b and crc32
digests of the tensors that could have been stored in the file instead).
Checkpoints written by earlier versions carry the same CRCs and are checked the same way. safetensors has no
checksum of its own: rb.weights.save writes "rb.checksum": "crc32:<8 hex digits>" of the tensors (names, dtypes,
shapes, bytes) into the header. A checksum stored in the file it checks guards against accidents (torn copies,
zeroed blocks, bit rot), not against someone who rewrites the file (who rewrites the checksum too), so CRC-32,
which detects every error burst up to 32 bits and misses a random change with probability 2**-32, is the fit.

A file of ours that carries no checksum (a safetensors file from an earlier version, a torch file in the pre-zip
format, one saved with torch's CRCs turned off) loads with one note on stderr, once per file; foreign files
(torchvision, detectron2) load silently.
"""
import os
import struct
import sys
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple, Type, TypeVar, Union

import torch

from .errors import WeightsError

try:  # the same CRC-32 as zlib's, about 3x faster (Intel ISA-L); optional: zlib gives the same values
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency, but a missing wheel must not stop a load
    _crc32 = zlib.crc32

CHECKSUM_KEY = "rb.checksum"
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = 0x04034B50
_CHUNK = 1 << 20
_NOTED: Set[str] = set()
T = TypeVar("T")
PathLike = Union[str, os.PathLike]


class CorruptFile(Exception):
    """A file whose bytes do not match the checksum recorded for them; str() is the reason, without the path."""


# -- what an unreadable file is -------------------------------------------------------------------------------------
def describe_bytes(path: PathLike) -> str:
    """What the start of `path` looks like, for "X is not a Y (...)" messages: empty, zeros, text, or its bytes."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError as error:
        return f"it cannot be read: {error.strerror or error}"
    if not head:
        return "it is empty (0 bytes)"
    if not head.strip(b"\0"):
        return f"it starts with zero bytes ({size} bytes in all): zeroed or damaged"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text.rstrip("\0")[:200]):
        first = text.splitlines()[0][:40] if text.strip() else ""
        return f"it is a text file ({size} bytes, starting {first!r})"
    return f"it starts with the bytes {head[:8].hex(' ')} ({size} bytes in all)"


def is_torch_zip(path: PathLike) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == _ZIP_MAGIC


# -- torch zip files: the CRC-32 of every record ---------------------------------------------------------------------
def verify_zip_records(path: PathLike) -> bool:
    """Check every record of torch zip file `path` against the CRC-32 its writer stored. True: all checked; False:
    the file records no CRCs (written with torch.serialization.set_crc32_options(False)). Raises CorruptFile naming
    the first record that differs, or a damaged zip structure."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CorruptFile(f"it is not a complete zip file ({error}: truncated, or its directory damaged)") from None
    if records and all(r.CRC == 0 for r in records if r.file_size):
        return False
    # Read through one small reused buffer rather than mmap: it stays in the CPU cache, and no page of the file is
    # mapped into the process (mapping 80k pages contended with torch.load's allocations in the thread beside it).
    buffer = bytearray(_CHUNK)
    chunk = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise CorruptFile("it is empty")
        for record in records:
            offset = record.header_offset
            handle.seek(offset)
            header = handle.read(30)
            if len(header) < 30 or struct.unpack_from("<I", header)[0] != _LOCAL_HEADER:
                raise CorruptFile(f"the header of its record {record.filename} is damaged")
            name_len, extra_len = struct.unpack_from("<HH", header, 26)
            start = offset + 30 + name_len + extra_len
            if start + record.compress_size > size:
                raise CorruptFile(f"it is truncated inside record {record.filename}")
            if not record.file_size:
                continue
            handle.seek(start)
            left, crc = record.compress_size, 0
            while left:
                got = handle.readinto(chunk[:min(left, _CHUNK)])
                if not got:
                    raise CorruptFile(f"it is truncated inside record {record.filename}")
                crc = _crc32(chunk[:got], crc)
                left -= got
            if crc != record.CRC:
                raise CorruptFile(f"record {record.filename} does not match the CRC-32 it was written with")
    return True


def load_torch_verified(path: PathLike, load: Callable[[], T]) -> Tuple[T, bool]:
    """(load(), whether the file's records were checked). A torch zip file is checked (verify_zip_records) in a
    thread while load() reads it, and nothing load() returned is handed out before the check has passed: CorruptFile
    is raised in preference to load()'s own error, since a damaged record explains that error. Any other file is
    loaded unchecked.

    Why a thread: zlib.crc32 releases the GIL for large buffers, and torch's zip reader copies each record in C++, so
    on a machine with a core to spare the check costs about nothing on top of the load (benchmarks/
    checkpoint_checksum.py, 2 quiet cores: load +7 to +25 %, save + load +1 to +3 % against no check;
    checked first, then loaded, it was +28 to +96 %). The pickle may be
    unpickled before the check ends; that is safe, torch.load(weights_only=True) runs no code."""
    if not is_torch_zip(path):
        return load(), False
    outcome: Dict[str, Any] = {}

    def check() -> None:
        try:
            outcome["verified"] = verify_zip_records(path)
        except CorruptFile as error:
            outcome["corrupt"] = error
        except BaseException as error:  # noqa: BLE001  (handed to the caller's thread below)
            outcome["error"] = error

    checker = threading.Thread(target=check, name="resbackbones-crc32", daemon=True)
    checker.start()
    try:
        obj = load()
    except BaseException:
        checker.join()
        if "corrupt" in outcome:
            raise outcome["corrupt"] from None
        raise
    checker.join()
    if "corrupt" in outcome:
        raise outcome["corrupt"]
    if "error" in outcome:
        raise outcome["error"]
    return obj, outcome["verified"]


# -- safetensors: rb.checksum in the header --------------------------------------------------------------------------
def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """"crc32:<8 hex>" over every tensor of `state` in key order: its name, dtype, shape and bytes (a swapped pair
    of same-shaped tensors, or a changed dtype, changes it too)."""
    crc = 0
    for key in sorted(state):
        tensor = state[key]
        crc = _crc32(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8"), crc)
        crc = _crc32(_tensor_bytes(tensor), crc)
    return f"crc32:{crc:08x}"


def verify_state_checksum(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: PathLike, *,
                          error: Type[Exception] = WeightsError) -> bool:
    """Compare `state` with metadata[CHECKSUM_KEY]; False when there is none. Raises `error` (one line naming the
    file) when it differs or names an algorithm this version does not know."""
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is None:
        return False
    if not str(recorded).startswith("crc32:"):
        raise error(f"{path}: its {CHECKSUM_KEY} {recorded!r} is not a checksum this version knows (crc32:<hex>); "
                    f"written by a newer resbackbones? upgrade to read it")
    found = state_checksum(state)
    if found != recorded:
        raise error(f"{path} is corrupted: its tensor data does not match the checksum it was saved with "
                    f"({CHECKSUM_KEY} {recorded}, the data gives {found}); nothing was loaded: use another copy")
    return True


def note_unverified(path: PathLike, what: str) -> None:
    """One note on stderr, once per file and process: our `what` at `path` carries no checksum to verify."""
    key = os.path.realpath(os.fspath(path))
    if key in _NOTED:
        return
    _NOTED.add(key)
    print(f"note: {path} carries no checksum ({what} written by an earlier version of resbackbones); its tensor "
          f"data cannot be verified. Save it again to add one.", file=sys.stderr, flush=True)


# -- dtypes ---------------------------------------------------------------------------------------------------------
def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def check_dtypes(state: Mapping[str, Any], source: Any, *, expected: Optional[Mapping[str, torch.Tensor]] = None,
                 error: Type[Exception] = WeightsError) -> None:
    """Refuse tensors whose kind (float / integer / bool / complex) differs from what the model holds, before
    load_state_dict would cast them silently (an int8 or bool tensor into a float parameter).

    expected: the model's state dict, compared key by key. Without it: every tensor must be floating point, except
    integer counters whose key ends in num_batches_tracked (BatchNorm's). Raises `error` in one line naming
    `source` (the file), the first key, its dtype and what was expected."""
    bad = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        kind = _kind(value.dtype)
        if expected is not None:
            mine = expected.get(key)
            if isinstance(mine, torch.Tensor) and _kind(mine.dtype) != kind:
                bad.append((key, value.dtype, f"the model's is {mine.dtype}"))
        elif kind != "float" and not (kind == "integer" and key.endswith("num_batches_tracked")):
            bad.append((key, value.dtype, "weights are floating point"))
    if bad:
        key, dtype, wanted = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise error(f"{source}: tensor {key} is {dtype}, {wanted}{more}; quantized, boolean or damaged weights are "
                    f"not cast to float: give the floating-point file")
