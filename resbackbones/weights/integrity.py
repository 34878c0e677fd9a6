"""Is a weights or checkpoint file what it claims to be? Checksums, dtypes, and one line for an unreadable file.

    obj = load_torch_parallel_verified(path)             # torch files: CRC-32 of every record, read in parallel
    obj, verified = load_torch_verified(path, lambda: torch.load(path, weights_only=True))   # the plain way
    meta[CHECKSUM_KEY] = state_checksum(state)           # safetensors: written by rb.weights.save
    verify_state_checksum(state, meta, path)             # ... and checked by every load
    check_dtypes(state, path, expected=model.state_dict())   # int8 / bool where the model holds float: refused

Checksums. torch.save's zip format stores a CRC-32 of every record (each tensor's bytes, the pickle), but
torch.load never checks them (its zip reader is built without CRC checks), so a checkpoint with a block of zeros
inside a tensor loads as if nothing happened. Every load here checks every record against its CRC-32 and hands
nothing out before the check passed. Saving: io/torch_zip.py fills the CRCs in after torch.save wrote the file
without them (ISA-L, in threads: several times faster than torch's own). Loading: load_torch_parallel_verified
reads every record in threads and computes its CRC piece by piece as it is read; where it does not apply (a
pre-zip file, a quantized tensor) load_torch_verified checks the records in a thread beside torch.load.
benchmarks/checkpoint_checksum.py measures both against no check at all, and the sha256, blake2b and crc32
digests of the tensors that could have been stored in the file instead.
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
import sys
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple, Type, TypeVar, Union

import torch

from ..io.torch_zip import crc32 as _crc32
from ..io.torch_zip import record_data_start
from .errors import WeightsError


CHECKSUM_KEY = "rb.checksum"
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 18
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
def _data_records(path: PathLike) -> Dict[int, zipfile.ZipInfo]:
    """{data offset in the file: ZipInfo} for every non-empty record of torch zip `path`, or CorruptFile."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CorruptFile(f"it is not a complete zip file ({error}: truncated, or its directory damaged)") from None
    out = {}
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        for record in records:
            try:
                start, _ = record_data_start(handle, record)
            except ValueError as error:
                raise CorruptFile(str(error)) from None
            if start + record.compress_size > size:
                raise CorruptFile(f"it is truncated inside record {record.filename}")
            if record.file_size:
                out[start] = record
    return out


def verify_zip_records(path: PathLike) -> bool:
    """Check every record of torch zip file `path` against the CRC-32 its writer stored. True: all checked; False:
    the file records no CRCs (written with torch.serialization.set_crc32_options(False)). Raises CorruptFile naming
    the first record that differs, or a damaged zip structure."""
    records = _data_records(path)
    if records and all(r.CRC == 0 for r in records.values()):
        return False
    # Read through one small reused buffer rather than mmap: it stays in the CPU cache, and no page of the file is
    # mapped into the process (mapping 80k pages contended with torch.load's allocations in the thread beside it).
    buffer = bytearray(_CHUNK)
    chunk = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        for start, record in records.items():
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


# -- torch zip files, loaded in parallel with the check fused into the copy ------------------------------------------
def _tensors(obj: Any, found: list) -> bool:
    """Collect every tensor of a loaded checkpoint (dicts, lists, tuples); False on one the parallel read cannot
    re-home (quantized, sparse, a subclass): the caller then loads the file the plain way."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout != torch.strided or obj.is_quantized:
            return False
        found.append(obj)
        return True
    if isinstance(obj, dict):
        return all(_tensors(v, found) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_tensors(v, found) for v in obj)
    return True


def load_torch_parallel_verified(path: PathLike, *, workers: Optional[int] = None,
                                 check: bool = True) -> Optional[Any]:
    """torch.load(path, weights_only=True) of a torch zip file, every record checked against its CRC-32, or None
    where this way does not apply (not an mmap-able zip file, a tensor it cannot re-home, an unexpected layout):
    the caller then loads the plain way (load_torch_verified), which also words any read error.

    How: torch.load(mmap=True) unpickles the structure and maps the file without reading its tensor data; each
    storage's record is then read with pread into the storage's own memory in `workers` threads (default: torch's
    thread count, at most 4; each thread with its own descriptor, so the kernel's read-ahead follows each stream),
    256 KiB at a time, and the CRC-32 of each piece is computed right after it is read, while it is in the CPU
    cache. pread and ISA-L's crc32 release the GIL. Reading is what torch.load does anyway (one read() per record
    on one thread), so with 2 cores this load is faster than torch.load without any check, and the check adds a
    few per cent over the same reads without it (benchmarks/checkpoint_checksum.py). Every tensor is re-pointed at
    its new storage (Tensor.set_): nothing handed out refers to the file, and a storage shared by several tensors
    stays shared. Raises CorruptFile naming the first record that differs. check=False: the same reads without
    the CRCs, only for benchmarks/checkpoint_checksum.py (what the check itself costs)."""
    path = os.fspath(path)
    if not hasattr(os, "preadv"):  # Windows: the plain way
        return None
    try:
        if not is_torch_zip(path):
            return None
        records = _data_records(path)
    except OSError:
        return None
    if records and all(r.CRC == 0 for r in records.values()):
        return None  # written without CRCs: the plain way notes it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            obj = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001  (the plain load words every failure, and refuses pickled code)
            return None
    found: list = []
    if not _tensors(obj, found):
        return None
    storages: Dict[int, torch.UntypedStorage] = {}
    for tensor in found:
        storage = tensor.untyped_storage()
        if storage.nbytes():
            storages.setdefault(storage.data_ptr(), storage)
    # Each storage is the mapping of one record: data_ptr - record offset is the same for all (the file's base).
    pointers = sorted(storages)
    offsets = sorted(o for o, r in records.items() if r.filename.rsplit("/", 2)[-2:-1] == ["data"])
    if len(pointers) != len(offsets):
        return None
    base = pointers[0] - offsets[0] if pointers else 0
    if any(p - o != base or storages[p].nbytes() != records[o].file_size for p, o in zip(pointers, offsets)):
        return None
    tensor_data = set(offsets)
    with open(path, "rb", buffering=0) as handle:  # data.pkl, version, byteorder, ...: a few KB
        for offset, record in records.items():
            if check and offset not in tensor_data:
                handle.seek(offset)
                if _crc32(handle.read(record.compress_size)) != record.CRC:
                    raise CorruptFile(f"record {record.filename} does not match the CRC-32 it was written with")

    local = threading.local()
    opened: list = []  # each worker thread's descriptor, closed below

    def copy_checked(pointer: int):
        # pread rather than a copy out of torch's mapping: faults on a mapping of a file that is not in the page
        # cache read a little at a time (a load from the disk took 1.5x torch.load's that way).
        if not hasattr(local, "fd"):
            local.fd = os.open(path, os.O_RDONLY)
            opened.append(local.fd)
        nbytes = storages[pointer].nbytes()
        record = records[pointer - base]
        target = torch.UntypedStorage(nbytes)
        view = memoryview(torch.empty(0, dtype=torch.uint8).set_(target).numpy())
        crc, done = 0, 0
        while done < nbytes:
            got = os.preadv(local.fd, [view[done:done + _CHUNK]], pointer - base + done)
            if got <= 0:
                raise CorruptFile(f"it is truncated inside record {record.filename}")
            if check:
                crc = _crc32(view[done:done + got], crc)
            done += got
        if check and crc != record.CRC:
            raise CorruptFile(f"record {record.filename} does not match the CRC-32 it was written with")
        return pointer, target

    largest_first = sorted(pointers, key=lambda p: -storages[p].nbytes())
    workers = workers or max(1, min(4, torch.get_num_threads()))
    try:
        if workers > 1 and len(largest_first) > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="resbackbones-load") as pool:
                copies = dict(pool.map(copy_checked, largest_first))
        else:
            copies = dict(map(copy_checked, largest_first))
    finally:
        for fd in opened:
            os.close(fd)
    with torch.no_grad():
        for tensor in found:
            storage = tensor.untyped_storage()
            target = copies[storage.data_ptr()] if storage.nbytes() else torch.UntypedStorage(0)
            tensor.set_(target, tensor.storage_offset(), tensor.size(), tensor.stride())
    return obj


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
