"""Run folders and eval_coco's outputs, on top of the one output rule (resbackbones/io/outputs.py).

    lock = claim_run_dir("output/run", resume=False, overwrite=False, run_files=RUN_FILES)  # train_cls / train_det
    refuse_inputs({"--out": out}, {"--gt": gt, "--dt": dt})          # re-exported from io.outputs, as are
    targets = unique_targets(images, out_dir, suffix=".png")        # OutputError, write_json_atomic, ...

A run folder belongs to one run. A new run refuses a folder that is not empty (continue that run with --resume, or
replace it with --overwrite, which first deletes the files a run of that tool writes and nothing else, never a file
the command reads), and an exclusive lock (flock on FOLDER/.lock, released by the kernel when the process ends,
kill -9 included) refuses a second writer while the first runs. The claim registers the folder as owned by this
process (io.outputs.register_owned_run): only it may write the run's config.yaml, metrics and checkpoints; the
.lock file stays after the run, so later commands know the folder is a run's. Forked children (DataLoader workers)
close their copy of the lock's descriptor at once: a flock belongs to the open file, so an orphaned worker still
draining after its parent was killed would otherwise hold the folder and refuse the --resume that follows. Under
torchrun only rank 0 writes, so only rank 0 claims.

Every refusal is an OutputError (a ValueError: the tools print it as one line and exit 2) naming the path and the fix.
"""
import contextlib
import json
import os
import shutil
import socket
import weakref
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Union

# The one output rule lives in io/outputs.py; these names stay importable from here (the tools and trainers did).
from ..evaluation.coco import IOU_TYPES
from ..io.output_paths import check_output_path, refuse_inputs, same_path, unique_targets  # noqa: F401 (re-exports)
from ..io.outputs import (LOCK_NAME, OutputError, check_new_output, register_owned_run,  # noqa: F401 (re-exports)
                          registered_inputs, release_owned_run, write_json_atomic, write_text_atomic)

try:
    import fcntl
except ImportError:  # Windows: no flock; the emptiness check still applies
    fcntl = None

PathLike = Union[str, os.PathLike]


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
        self.folder = folder
        self._fd: Optional[int] = None
        if fcntl is None:
            register_owned_run(folder)
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
        register_owned_run(folder)  # the one output rule lets this process, and only it, write the run's own files

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
        release_owned_run(self.folder)


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


def _refuse_removing_inputs(folder: Path, run_files: Sequence[str]) -> None:
    """--overwrite deletes the previous run's files: never one this command reads (--weights RUN/checkpoints/best.pt)."""
    for name in run_files:
        doomed = os.path.realpath(folder / name)
        for source in sorted(registered_inputs()):
            if source == doomed or source.startswith(doomed + os.sep):
                raise OutputError(f"--overwrite would delete {folder / name}, which this command reads ({source}); "
                                  f"copy it out of {folder} first, or give another --output")


def remove_run_files(folder: Path, run_files: Sequence[str]) -> List[str]:
    """Delete folder/<name> (file or folder) for each name in run_files; returns the names removed."""
    _refuse_removing_inputs(folder, run_files)
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


# -- tools/eval_coco.py's outputs ------------------------------------------------------------------------------------
# Beside the iou types ("bbox", "segm") in a stats json; max_dets: COCOeval maxDets, so AR1 / AR10 / AR100 are AR at
# its three values (the names stay, the caps are recorded).
STATS_EXTRA_KEYS = ("per_category", "ap_unit", "max_dets")


def eval_detections_path(out: Optional[PathLike], results: Optional[PathLike]) -> Path:
    """Where eval_coco --checkpoint writes its detections json: `results` (--results), else OUT_STEM.detections.json
    beside `out` (--out; stats.detections.json without it), a name a rerun with the same --out replaces."""
    out = Path(out or "stats.json")
    return Path(results) if results else out.with_name(f"{out.stem}.detections.json")


def is_coco_stats_file(path: PathLike) -> bool:
    """Whether `path` holds a stats json of tools/eval_coco.py: an object of iou-type sections (each an object),
    and nothing else than STATS_EXTRA_KEYS beside them. Anything unreadable is not one."""

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
    """eval_coco's rules, before any work: no output over an input (`inputs`: flag -> path, registered) or over the
    other output or another run's files; unless `overwrite`, no detections json that exists (--results, or the
    implicit OUT_STEM.detections.json: maybe a user's file of that name) and no --out that exists and is not a
    stats json of the tool (a rerun replaces its own). out: the stats json (--out); detections: where the detections
    json goes (eval_detections_path; None when there is none); results: the --results the user gave, if any.
    Raises OutputError naming the flag and the fix."""
    refuse_inputs({"--out": out, "--results": detections}, inputs)
    if detections:
        where = "--results" if results else "the detections json (beside --out; --results chooses)"
        check_new_output(detections, where, overwrite=overwrite)
    if out and not overwrite and Path(out).exists() and not is_coco_stats_file(out):
        raise OutputError(f"--out {out} exists and is not a stats json of tools/eval_coco.py; give another path, "
                          f"or --overwrite to replace it")
