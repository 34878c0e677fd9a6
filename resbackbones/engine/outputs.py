"""Nothing lost: where the tools write, checked before any work starts.

    lock = claim_run_dir("output/run", resume=False, overwrite=False, run_files=RUN_FILES)  # train_cls / train_det
    refuse_inputs({"--out": out}, {"--gt": gt, "--dt": dt})                               # eval_coco, convert_weights
    targets = unique_targets(images, out_dir, suffix=".png")                             # predict

A run folder belongs to one run. A new run refuses a folder that is not empty (continue that run with --resume, or
replace it with --overwrite, which first deletes the files a run of that tool writes and nothing else), and an
exclusive lock (flock on FOLDER/.lock, released by the kernel when the process ends, kill -9 included) refuses a
second writer while the first runs. Forked children (DataLoader workers) close their copy of the lock's descriptor at
once: a flock belongs to the open file, so an orphaned worker still draining after its parent was killed would
otherwise hold the folder and refuse the --resume that follows. Under torchrun only rank 0 writes, so only rank 0 claims. A tool never writes
over one of its own inputs, and never gives two inputs the same output name.

Every refusal is an OutputError (a ValueError: the tools print it as one line and exit 2) naming the path and the fix.

    write_json_atomic(OUTPUT / "eval.json", summary)   # every JSON a tool or trainer writes (text: write_text_atomic)

A file is written beside its target under a hidden temp name and renamed over it, so a reader (or a run killed
mid-write) never sees half a file: the target holds the old content or the new, nothing in between.
"""
import contextlib
import json
import os
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

try:
    import fcntl
except ImportError:  # Windows: no flock; the emptiness check still applies
    fcntl = None

PathLike = Union[str, os.PathLike]
LOCK_NAME = ".lock"


class OutputError(ValueError):
    """An output that would replace another run's files or one of the tool's inputs; one line with the fix."""


_HELD_LOCKS: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _drop_locks_in_forked_child() -> None:
    for lock in list(_HELD_LOCKS):
        lock._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_forked_child)


class RunLock:
    """An exclusive flock on FOLDER/.lock held until release() or the end of the process (never by forked children)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._fd: Optional[int] = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{folder} is in use by a running job ({holder}): two runs in one output folder would "
                              f"mix their files; wait for it to end or give another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD_LOCKS.add(self)

    def _forget_in_child(self) -> None:
        # Close only this process's descriptor: the parent keeps the flock, and the file's text stays the parent's.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
        _HELD_LOCKS.discard(self)


def is_main_process() -> bool:
    """True unless this is a torchrun worker of rank > 0 (those never write run files)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def claim_run_dir(folder: PathLike, *, resume: bool, overwrite: bool, run_files: Sequence[str]) -> Optional[RunLock]:
    """Check and lock the output folder of a training run; returns the lock (None on ranks > 0).

    resume: continue the run in `folder` (any content allowed). overwrite: delete the entries of `run_files` (the
    names a run of this tool writes) and start afresh. Neither: the folder must be absent or empty.
    """
    if not is_main_process():
        return None
    folder = Path(folder)
    if resume and overwrite:
        raise OutputError("--resume continues the run in the output folder and --overwrite replaces it: give one")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file; give --output a folder (new or empty)")
    check_output_path(folder, "--output", folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    present = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
    if present and not resume:
        if not overwrite:
            lock.release()
            shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
            raise OutputError(f"output folder {folder} is not empty ({shown}): a new run would replace those files; "
                              f"continue that run with --resume, give another --output, or replace it with --overwrite")
        removed = remove_run_files(folder, run_files)
        if removed:
            print(f"--overwrite: removed the previous run's {', '.join(removed)} from {folder}", flush=True)
    return lock


@contextlib.contextmanager
def claimed_run_dir(folder: PathLike, *, resume: bool, overwrite: bool, run_files: Sequence[str]
                    ) -> Iterator[Optional[RunLock]]:
    """claim_run_dir for the length of a with block, released when the block ends, on an error too (the process
    may go on: a tool's main() called in-process, a test)."""
    lock = claim_run_dir(folder, resume=resume, overwrite=overwrite, run_files=run_files)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def remove_run_files(folder: Path, run_files: Sequence[str]) -> List[str]:
    """Delete folder/<name> (file or folder) for each name in run_files; returns the names removed."""
    removed = []
    for name in run_files:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether a and b name one file (hard and symbolic links included), existing or not."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: PathLike, flag: str, *, folder: bool = False) -> None:
    """OutputError when `path` cannot be written: a file output that is an existing folder, a folder output that is
    a file, or a path under a file (`afile/out.json`; open / mkdir raised NotADirectoryError or FileExistsError)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; give a folder (new or empty)")
    if not folder and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    for parent in ([path] if folder else []) + list(path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"{flag} {path} cannot be written: {parent} is a file, not a folder; give a path "
                                  f"in a folder")
            try:  # the first existing folder must take new files (a read-only mount, /proc, no permission)
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as error:
                raise OutputError(f"{flag} {path} cannot be written: no file can be made in {parent} "
                                  f"({error.strerror or error}); give a path in a writable folder") from None
            break


def refuse_inputs(outputs: Mapping[str, Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]], *,
                  folders: bool = False) -> None:
    """OutputError when an output path is one of the inputs, or two outputs are one path (names: the flags), or an
    output cannot be written (check_output_path; folders: the outputs are folders, else files)."""
    given_in = [(flag, p) for flag, p in inputs.items() if p]
    given_out = [(flag, p) for flag, p in outputs.items() if p]
    for flag, out in given_out:
        check_output_path(out, flag, folder=folders)
    for flag, out in given_out:
        for in_flag, source in given_in:
            if same_path(out, source):
                raise OutputError(f"{flag} {out} is the {in_flag} input: writing it would destroy the input; "
                                  f"choose another {flag}")
    for i, (flag, out) in enumerate(given_out):
        for other_flag, other in given_out[i + 1:]:
            if same_path(out, other):
                raise OutputError(f"{flag} and {other_flag} are both {out}; give them different paths")


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temp file in the same folder and a rename; creates the folder.
    Returns the path. The temp file (".<name>.tmp-<pid>") is removed when the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # only after a failed write: a successful one renamed it
            tmp.unlink()
    return path


def write_json_atomic(path: PathLike, data: Any, *, indent: Optional[int] = 2) -> Path:
    """json.dumps(data, indent=indent) written atomically (write_text_atomic); indent=None: one line, for large
    files such as COCO results. Returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=indent))


def unique_targets(sources: Iterable[PathLike], folder: PathLike, *, suffix: str) -> Dict[Path, Path]:
    """{source: folder/<source stem><suffix>}, refusing a target that is one of the sources or that two sources share."""
    sources = [Path(s) for s in sources]
    targets: Dict[Path, Path] = {}
    owner: Dict[Path, Path] = {}
    for source in sources:
        target = Path(folder) / f"{source.stem}{suffix}"
        key = target.resolve()
        if key in owner:
            raise OutputError(f"{owner[key]} and {source} would both be written to {target}; give them separately "
                              f"with different --output folders (or rename one)")
        owner[key] = source
        targets[source] = target
    for target in targets.values():
        clash = next((s for s in sources if same_path(target, s)), None)
        if clash is not None:
            raise OutputError(f"writing {target} would replace the input image {clash}; give another --output")
    return targets


# -- tools/eval_coco.py's outputs ------------------------------------------------------------------------------------
STATS_EXTRA_KEYS = ("per_category", "ap_unit")  # beside the iou types ("bbox", "segm") in a stats json


def eval_detections_path(out: Optional[PathLike], results: Optional[PathLike]) -> Path:
    """Where eval_coco --checkpoint writes its detections json: `results` (--results), else OUT_STEM.detections.json
    beside `out` (--out; stats.detections.json without it), a name a rerun with the same --out replaces."""
    out = Path(out or "stats.json")
    return Path(results) if results else out.with_name(f"{out.stem}.detections.json")


def is_coco_stats_file(path: PathLike) -> bool:
    """Whether `path` holds a stats json of tools/eval_coco.py: an object of iou-type sections (each an object),
    and nothing else than STATS_EXTRA_KEYS beside them. Anything unreadable is not one."""
    from ..evaluation.coco import IOU_TYPES  # only here: every tool imports this module, few check a stats file

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not set(data) & set(IOU_TYPES) or not set(data) <= {*IOU_TYPES, *STATS_EXTRA_KEYS}:
        return False
    return all(isinstance(v, dict) for k, v in data.items() if k in IOU_TYPES)


def check_eval_outputs(out: Optional[PathLike], inputs: Mapping[str, Optional[PathLike]], *,
                       detections: Optional[PathLike] = None, results: Optional[PathLike] = None,
                       overwrite: bool = False) -> None:
    """eval_coco's rules, before any work: no output over an input (`inputs`: flag -> path) or over the other
    output; unless `overwrite`, no --results file that exists (another evaluation's detections?) and no --out that
    exists and is not a stats json of the tool. out: the stats json (--out); detections: where the detections json
    goes (eval_detections_path; None when there is none); results: the --results the user gave, if any (the default
    name beside --out belongs to --out: a rerun replaces both). Raises OutputError naming the flag and the fix."""
    refuse_inputs({"--out": out, "--results": detections}, inputs)
    if overwrite:
        return
    if results and Path(results).exists():
        raise OutputError(f"--results {results} exists (another evaluation's detections?); give another --results, "
                          f"or --overwrite to replace it")
    if out and Path(out).exists() and not is_coco_stats_file(out):
        raise OutputError(f"--out {out} exists and is not a stats json of tools/eval_coco.py; give another --out, "
                          f"or --overwrite to replace it")
