"""The one output rule: every file the library and its tools write goes through this module.

    write_json_atomic(out / "eval.json", stats)            # text / JSON / bytes / torch objects / images
    save_torch_atomic(state, ckpt)                         # fsync'd, for checkpoints
    write_image(out / "a.png", canvas_bgr)                 # cv2.imencode + atomic write: its failure is seen
    write_atomic(path, lambda tmp: fig.savefig(tmp))       # writers that only take a file name
    check_new_output(path, "--export", overwrite=False)    # before any work: refuse an existing file

The rule, for every write:
1. Atomic: a hidden temp file beside the target (".<name>.tmp-<pid>"), flushed and fsync'ed, renamed over the
   target, the folder fsync'ed; the temp file is removed on every failure (an exception, Ctrl-C), so the target
   holds the old content or the new, never half a file.
2. Checked: a write that fails (ENOSPC, EACCES, EFBIG under RLIMIT_FSIZE, EROFS, a path the file system cannot
   encode) becomes one OutputError naming the file and the reason; the tools print it as one line and exit 2.
3. Never onto an input: every file the command reads through the library's readers is registered
   (register_input); writing onto one of them is refused, whatever --overwrite says.
4. Never onto another run's files: a run folder (it holds the trainer's ".lock") is written only by the process
   that claimed it (register_owned_run); config.yaml, metrics.*, eval.json and checkpoints/ of any other run
   folder are refused.
5. Never silently replaced: tools call check_new_output before any work; an existing file is refused unless
   --overwrite (the same flag and message in every tool).

Every refusal and failure is an OutputError (a ValueError, so every tool reports it as one line with exit 2).
The checks of a command line's paths before any work (refuse_inputs, which registers the inputs; unique_targets;
check_output_path) are in io/output_paths.py; the run folders' locks in engine/outputs.py (claim_run_dir).
"""
import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Set, Union

from ..utils.errors import OutputError

PathLike = Union[str, os.PathLike]
LOCK_NAME = ".lock"  # written by engine.outputs.claim_run_dir into every training run folder
RUN_OWNED_NAMES = ("config.yaml", "metrics.csv", "metrics.jsonl", "eval.json", "curves.png", "last.pt", "best.pt")
RUN_OWNED_FOLDERS = ("checkpoints", "tensorboard")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


_INPUTS: Set[str] = set()
_OWNED_RUNS: Set[str] = set()

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit, ulimit -f, or the file system's maximum)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",  # mkdir of the target's folder: the only EEXIST
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "file name too long",
}


def _key(path: PathLike) -> str:
    try:
        return os.path.realpath(os.fspath(path))
    except (OSError, ValueError):
        return os.path.abspath(os.fspath(path))


def register_input(path: PathLike) -> None:
    """Record that this command reads `path`: no output of the process may be written onto it afterwards."""
    _INPUTS.add(_key(path))


def registered_inputs() -> Set[str]:
    """The resolved paths registered as inputs in this process (a copy)."""
    return set(_INPUTS)


def clear_registries() -> None:
    """Forget the registered inputs and owned runs (for a tool's main() called several times in one process)."""
    _INPUTS.clear()
    _OWNED_RUNS.clear()


def register_owned_run(folder: PathLike) -> None:
    """This process owns the run in `folder` (it holds the folder's lock): it may write the run's own files."""
    _OWNED_RUNS.add(_key(folder))


def release_owned_run(folder: PathLike) -> None:
    _OWNED_RUNS.discard(_key(folder))


def _run_folder_of(target: Path) -> Optional[Path]:
    """The run folder whose own file `target` is (RUN/<run-owned name> or RUN/<run-owned folder>/...), else None."""
    parent = target.parent
    if target.name in RUN_OWNED_NAMES and (parent / LOCK_NAME).exists():
        return parent
    for folder in [parent, *parent.parents][:3]:
        if folder.name in RUN_OWNED_FOLDERS and (folder.parent / LOCK_NAME).exists():
            # checkpoints/ holds the run's *.pt and reports about them (train_det --eval-only: X.eval.json beside
            # X.pt), which any command may write; tensorboard/ is the run's alone.
            if folder.name != "checkpoints" or target.suffix in CHECKPOINT_SUFFIXES:
                return folder.parent
    return None


def check_output_name(path: PathLike, flag: str = "") -> None:
    """OutputError when `path` is not valid UTF-8 (a name given as bytes, which Python carries as surrogate escapes):
    OpenCV crashes on such names and the library records its output paths as UTF-8 text (config.yaml, eval.json),
    so such a name is refused before any work, naming it with the bad bytes escaped."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        where = f"{flag} " if flag else ""
        raise OutputError(f"cannot write {where}{show_path(Path(path))}: the name is not valid UTF-8; give a UTF-8 "
                          f"name") from None


def check_writable_target(path: PathLike) -> None:
    """Rules 2-4 for one target: OutputError when its name is not UTF-8, it is a registered input, or it is a run
    folder's own file and this process does not own that run. The owning trainer may rewrite its run's files even
    when it read them (the last.pt it resumed from, its config.yaml given as --config)."""
    path = Path(path)
    check_output_name(path)
    key = _key(path)
    run = _run_folder_of(Path(key))
    if any(key.startswith(owned + os.sep) for owned in _OWNED_RUNS):
        return  # the trainer owning the run rewrites what it reads (last.pt on --resume, its config.yaml)
    if key in _INPUTS:
        raise OutputError(f"refused to write {path}: this command reads it as an input; writing it would destroy "
                          f"the input, give another output path")
    if run is not None:
        raise OutputError(f"refused to write {path}: it belongs to the training run in {run} (only that run's "
                          f"trainer writes it); give a path outside the run folder")


def check_new_output(path: PathLike, flag: str, *, overwrite: bool) -> None:
    """Rule 5, before any work: OutputError when `path` exists (and `overwrite` is false), is a folder, or is an
    input / another run's file (whatever `overwrite`). `flag` names the option in the message ("--out")."""
    path = Path(path)
    check_output_name(path, flag)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    check_writable_target(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{flag} {path} exists; give another path, or --overwrite to replace it")


def describe_os_error(error: BaseException) -> str:
    """The reason of a failed write in a few words (the errno's meaning, else the error's text)."""
    if isinstance(error, UnicodeError):
        return "the path is not valid in the file system's encoding"
    if isinstance(error, OSError) and error.errno in _REASONS:
        return _REASONS[error.errno]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def show_path(path: Union[PathLike, bytes]) -> str:
    """`path` as printable text for a message: bytes that are not valid UTF-8 (Python keeps them as lone surrogates,
    "\\udcff") become "\\xff" escapes, the bytes the user gave (b"out\\xff" -> out\\xff); readers and writers alike."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_failed(path: PathLike, error: BaseException) -> OutputError:
    """The OutputError for a write of `path` that raised `error` (nothing of it is left behind)."""
    return OutputError(f"cannot write {show_path(Path(path))}: {describe_os_error(error)}; nothing was written")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened for fsync on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: PathLike) -> Path:
    """The temp name an atomic write of `path` uses: ".<name>.tmp-<pid>" in the same folder (cleanup tools match it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: PathLike, write: Callable[[str], None], *, fsync: bool = True,
                 keep_suffix: bool = False) -> Path:
    """Rules 1-4 for a writer that takes a file name: write(tmp_name) writes the whole file, which is then fsync'ed
    and renamed over `path` (folders created). The temp name is temp_path(path); keep_suffix appends the target's
    suffix to it (".<name>.tmp-<pid><suffix>") for writers that pick the format from it (matplotlib). Returns
    `path`."""
    path = Path(path)
    check_writable_target(path)
    tmp = temp_path(path)
    if keep_suffix:
        tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(os.fspath(tmp))
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_folder(path.parent)
    except (OSError, UnicodeError) as error:
        raise write_failed(path, error) from None
    except RuntimeError as error:  # torch / safetensors writers wrap the OSError in their own error
        if any(word in str(error).lower() for word in ("space", "write", "file", "permission", "errno")):
            raise write_failed(path, error) from None
        raise
    finally:
        try:
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()
        except (OSError, UnicodeError):
            pass
    return path


class _RecordingFile:
    """An open file whose first write error is kept: torch.save's C++ writer swallows it and raises its own
    "unexpected pos" RuntimeError, which names no cause; the kept OSError is re-raised instead."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def write_stream_atomic(path: PathLike, write: Callable[[BinaryIO], None], *, fsync: bool = True,
                        finish: Optional[Callable[[str], None]] = None) -> Path:
    """write_atomic for a writer of an open binary file: write(handle) writes the whole content; finish(temp name),
    if given, then completes the closed temp file in place (before the fsync and the rename)."""
    def to_file(name: str) -> None:
        with open(name, "wb") as handle:
            recording = _RecordingFile(handle)
            try:
                write(recording)  # type: ignore[arg-type]
                handle.flush()
            except Exception:
                if recording.error is not None:
                    raise recording.error from None
                raise
        if finish is not None:
            finish(name)

    return write_atomic(path, to_file, fsync=fsync)


def write_bytes_atomic(path: PathLike, data: bytes, *, fsync: bool = True) -> Path:
    return write_stream_atomic(path, lambda handle: handle.write(data), fsync=fsync)


def write_text_atomic(path: PathLike, text: str, *, fsync: bool = True) -> Path:
    """`text` as UTF-8 in `path`, atomically (write_atomic). Returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: PathLike, data: Any, *, indent: Optional[int] = 2, fsync: bool = True) -> Path:
    """json.dumps(data, indent=indent) written atomically; indent=None: one line, for large files such as COCO
    results. NaN / inf are refused by json.dumps(allow_nan=False) only when the caller asks; here they are written
    as JSON's NaN tokens as before (the library's readers accept them). Returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=indent), fsync=fsync)


def _fsync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # write_atomic's own fsync afterwards reports it
        pass


def save_torch_atomic(obj: Any, path: PathLike, *, fsync: bool = True) -> Path:
    """torch.save(obj) to `path` atomically (write_atomic): training checkpoints and torch weights files. Every
    zip record carries its CRC-32 (what every load checks, weights/integrity.py), whatever
    torch.serialization.set_crc32_options says: torch writes the file without them and torch_zip.fill_record_crcs
    fills them in, several times faster than torch's own single-threaded CRC."""
    import torch

    from .torch_zip import fill_record_crcs

    def write(handle: BinaryIO, crcs: bool = False) -> None:
        was = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(crcs)
        try:
            torch.save(obj, handle)
        finally:
            torch.serialization.set_crc32_options(was)

    def finish(name: str) -> None:
        try:
            with open(name, "r+b") as handle:
                # The data goes to the disk while the CRCs are computed from the page cache: the CRC work hides in
                # the fsync's wait (write_atomic's own fsync then writes only the few patched pages).
                flushing = threading.Thread(target=_fsync_quietly, args=(handle.fileno(),), daemon=True) \
                    if fsync else None
                if flushing is not None:
                    flushing.start()
                try:
                    fill_record_crcs(handle)
                finally:
                    if flushing is not None:
                        flushing.join()
        except ValueError:  # a layout fill_record_crcs does not know (a future torch): torch's own CRCs then
            with open(name, "wb") as handle:
                write(handle, crcs=True)

    return write_stream_atomic(path, write, fsync=fsync, finish=finish)


def write_image(path: PathLike, image_bgr, *, fsync: bool = False) -> Path:
    """An image (uint8 HxWx3 BGR, or HxW) encoded by the target's suffix (.png, .jpg, ...) and written atomically.

    cv2.imwrite reports failure only by returning False (and crashes on paths it cannot encode); encoding in memory
    and writing the bytes here makes both an OutputError naming the file."""
    import cv2

    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", image_bgr)
    except cv2.error as error:
        raise OutputError(f"cannot write {show_path(path)}: OpenCV cannot encode an image as {path.suffix!r} "
                          f"({str(error).strip().splitlines()[-1]})") from None
    if not ok:
        raise OutputError(f"cannot write {show_path(path)}: OpenCV could not encode the image as {path.suffix!r}")
    return write_bytes_atomic(path, encoded.tobytes(), fsync=fsync)


def write_serialized_atomic(path: PathLike, serialize: Callable[[BinaryIO], None], *, fsync: bool = True) -> Path:
    """serialize(buffer) into memory, then the bytes written atomically. For writers in C++ (torch.jit.save,
    torch.export.save, torch.onnx.export) that abort the process or hide the errno when the disk fills mid-write:
    in memory they cannot fail that way, and the file write is Python's, whose errors become an OutputError."""
    import io

    buffer = io.BytesIO()
    serialize(buffer)
    return write_bytes_atomic(path, buffer.getvalue(), fsync=fsync)


def save_torchscript_atomic(module: Any, path: PathLike) -> Path:
    """torch.jit.save(module) to `path` (write_serialized_atomic)."""
    import torch

    return write_serialized_atomic(path, lambda buffer: torch.jit.save(module, buffer))


def save_exported_program_atomic(program: Any, path: PathLike) -> Path:
    """torch.export.save(program) to `path` (write_serialized_atomic)."""
    import torch

    return write_serialized_atomic(path, lambda buffer: torch.export.save(program, buffer))


def save_safetensors_atomic(tensors: dict, path: PathLike, *, metadata: Optional[dict] = None) -> Path:
    """A safetensors file of `tensors` (name -> CPU tensor) with `metadata` (str -> str) in its header, atomically."""
    from safetensors.torch import save

    return write_bytes_atomic(path, save(tensors, metadata=metadata))


def save_figure_atomic(figure: Any, path: PathLike, **savefig_options: Any) -> Path:
    """A matplotlib figure saved to `path` (format from its suffix), atomically; savefig_options: dpi, ..."""
    return write_atomic(path, lambda name: figure.savefig(name, **savefig_options), keep_suffix=True)
