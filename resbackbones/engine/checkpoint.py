"""Atomic training checkpoints that resume bit-identically, loaded without running pickled code.

A checkpoint is a dict of state dicts and plain values (model, optimizer, scheduler, scaler, EMA, the RNG states
of python/numpy/torch/cuda, loop position). It is written to a temp file in the same folder, fsync'ed and
renamed over the target, so a kill at any moment leaves either the old or the new file, never a torn one.
The temp file (".<name>.tmp-<pid>") of a writer killed mid-write is removed by the next save into that folder
once no process has that pid (remove_stale_temp_files).
Writing goes through the output rule of resbackbones.io.outputs (refusals and write failures are one OutputError).
Loading goes through weights.checkpoint.TrainingCheckpoint.read (torch.load(weights_only=True), the same refusal as
for weights files): a file that carries pickled code is refused, and one whose records differ from their CRC-32 (a
block of zeros written into it, a torn copy) is refused naming it; every older layout is upgraded to the one schema
(weights.checkpoint.upgrade). Checkpointer is the one writer and loader of both trainers.
"""
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..io.outputs import save_torch_atomic

# CheckpointError and load_matching_state live with the reader in weights/ (evaluation and deploy load detectors
# without engine/); the trainers and tools import them from here too.
from ..utils.comm import all_gather_objects
from ..weights.checkpoint import (CheckpointError, TrainingCheckpoint, load_matching_state,  # noqa: F401
                                  read_model_checkpoint)

PathLike = Union[str, os.PathLike]
LAST = "last.pt"
BEST = "best.pt"
CHECKPOINTS = "checkpoints"  # OUTPUT/checkpoints/{last,best,epoch_N,iter_N}.pt: the layout of both trainers
_EPOCH_FILE = re.compile(r"^(epoch|iter)_(\d+)\.pt$")
_TEMP_FILE = re.compile(r"^\.(?P<target>.+\.pt)\.tmp-(?P<pid>\d+)$")  # save_atomic's temp names
_LOADED_AT = time.time()  # this process wrote no temp file before: one with our pid and an older mtime is stale


def rng_state() -> Dict[str, Any]:
    """Every global RNG the training loop touches, in a weights_only-loadable form (tensors, ints, lists)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_state() -> List[Dict[str, Any]]:
    """rng_state() of every rank, in rank order, on every rank (a collective under DDP: call it on all ranks).
    Checkpoints store this list: with seed + rank, each rank's generators differ (engine/setup.py)."""

    return all_gather_objects(rng_state())


def restore_rng_state(saved: Union[Dict[str, Any], List[Dict[str, Any]]], rank: int) -> None:
    """Restore this rank's generators from a checkpoint's "rng": a list over ranks (this rank's entry; a run resumed
    with more processes than it was saved with reuses entries cyclically), or a legacy single dict (every rank)."""
    set_rng_state(saved[rank % len(saved)] if isinstance(saved, list) else saved)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OSError, OverflowError):  # not a valid pid here
        return False
    return True


def remove_stale_temp_files(folder: PathLike) -> List[Path]:
    """Delete the temp files that killed checkpoint writers (SIGKILL, OOM killer) left in `folder`.

    Only save_atomic's own temp names (".<name>.pt.tmp-<pid>") are considered, and one is removed only when its
    writer is gone: no process has that pid, or the pid is this process's and the file is older than this module
    (a killed writer whose pid we reuse, as after a container restart). A live pid is left alone, even when it
    was reused by an unrelated process. The pid test is only meaningful on the machine that wrote the file, so
    this runs in the process that writes the checkpoints (save_atomic calls it: rank 0 under DDP, where only
    rank 0 writes). Returns the removed paths.
    """
    removed: List[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    me = os.getpid()
    for entry in entries:
        match = _TEMP_FILE.match(entry.name)
        if not match:
            continue
        pid = int(match.group("pid"))
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if pid == me:
                # 1 s of slack: file times come from a coarse clock that may lag time.time() a little.
                stale = entry.stat(follow_symlinks=False).st_mtime < _LOADED_AT - 1.0
            else:
                stale = not _process_alive(pid)
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to delete: never let cleaning fail a save
            pass
    return removed


def save_atomic(obj: Dict[str, Any], path: PathLike) -> Path:
    """torch.save to `path` under the one output rule (resbackbones.io.outputs.save_torch_atomic): temp file
    ".<name>.tmp-<pid>" + fsync + rename (+ fsync of the folder so the rename is durable); a registered input or
    another run's file is refused, a failed write (disk full, permissions) is one OutputError naming the file and
    leaves nothing behind.

    First removes the temp files of dead writers from the folder (remove_stale_temp_files). The zip records carry
    a CRC-32 each (save_torch_atomic fills them in, also where a caller turned torch's off), which every load
    verifies (weights/integrity.py): a checkpoint damaged after it was written is refused, naming it.
    """
    path = Path(path)
    remove_stale_temp_files(path.parent)
    return save_torch_atomic(obj, path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The whole training checkpoint (model, optimizer, RNG states, ...), read with weights_only=True. Raises
    CheckpointError naming the file (also for a bare state dict: nothing to resume from)."""
    checkpoint = read_model_checkpoint(path, map_location)
    if not checkpoint.is_training_checkpoint:
        raise CheckpointError(f"{checkpoint.path} is not a training checkpoint (no 'model' entry)")
    return checkpoint.raw


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any], *, checkpoint: PathLike) -> None:
    """Load a training checkpoint's optimizer state into `optimizer` (a resume), or one CheckpointError naming the
    checkpoint when it was written by another optimizer (sgd vs adamw: torch raised a KeyError deep in
    __setstate__) or for other parameter groups (torch's ValueError)."""
    saved = state.get("optimizer")
    recorded = ((state.get("config") or {}).get("solver") or {}).get("optimizer")
    ours = type(optimizer).__name__
    hint = f"resume with solver.optimizer={recorded}" if recorded else "resume with the optimizer it was trained with"
    if not isinstance(saved, dict) or "param_groups" not in saved:
        raise CheckpointError(f"checkpoint {checkpoint} has no optimizer state to resume from")
    theirs = set().union(*(group.keys() for group in saved["param_groups"])) - {"params"}
    mine = set().union(*(group.keys() for group in optimizer.param_groups)) - {"params"}
    foreign = sorted((theirs ^ mine) - {"initial_lr", "foreach", "differentiable", "fused", "maximize",
                                          "capturable", "decoupled_weight_decay"})
    if foreign:
        raise CheckpointError(f"checkpoint {checkpoint} holds the state of another optimizer"
                              f"{f' ({recorded})' if recorded else ''} than this run's {ours} (settings "
                              f"{', '.join(foreign[:4])} differ): {hint}, or start a new run")
    try:
        optimizer.load_state_dict(saved)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {checkpoint}: its optimizer state does not fit this run's {ours} "
                              f"({error}): {hint}, or start a new run") from None


def find_last_checkpoint(folder: PathLike) -> Optional[Path]:
    """folder/last.pt if present, else the highest epoch_N.pt / iter_N.pt; None if the folder has none."""
    folder = Path(folder)
    if (folder / LAST).is_file():
        return folder / LAST
    numbered: List[tuple] = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _EPOCH_FILE.match(entry.name)
            if match:
                numbered.append((int(match.group(2)), entry))
    return max(numbered)[1] if numbered else None


def checkpoints_dir(output: PathLike) -> Path:
    """Where both trainers keep their checkpoints: OUTPUT/checkpoints."""
    return Path(output) / CHECKPOINTS


def find_resume_checkpoint(output: PathLike, resume: Union[bool, str, os.PathLike]) -> Tuple[Optional[Path], str]:
    """The one resume rule of tools/train_cls.py and tools/train_det.py, and the line to print about it.

    resume a path -> that file; True -> OUTPUT/checkpoints/last.pt, else the highest checkpoints/{epoch,iter}_N.pt,
    else OUTPUT/last.pt (train_det wrote it there before the shared layout; the note says so, the next save goes to
    checkpoints/), else (None, "resume: no checkpoint in OUTPUT/checkpoints, starting from scratch").
    """
    if resume is not True:
        return Path(resume), ""
    folder = checkpoints_dir(output)
    found = find_last_checkpoint(folder)
    if found is not None:
        return found, ""
    legacy = Path(output) / LAST
    if legacy.is_file():
        return legacy, (f"note: {legacy} is in the layout of train_det before checkpoints/; resuming from it, the "
                        f"next checkpoints go to {folder}")
    return None, f"resume: no checkpoint in {folder}, starting from scratch"


class CheckpointManager:
    """The one best-checkpoint tracker of both trainers: writes last.pt every time and best.pt when `metric`
    improves (rank 0 only, by the caller); NaN or a missing value never wins, ties keep the earlier one. Checkpoints
    carry best_metric, best_metric_name and best_iteration, so a resumed run knows the best so far."""

    def __init__(self, folder: PathLike, *, metric: str = "val_top1", mode: str = "max", keep_every: int = 0,
                 keep_unit: str = "epoch"):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint mode must be 'max' or 'min', got {mode!r}")
        if keep_unit not in ("epoch", "iter"):
            raise ValueError(f"checkpoint keep_unit must be 'epoch' or 'iter', got {keep_unit!r}")
        self.keep_unit = keep_unit
        self.folder = Path(folder)
        self.metric = metric
        self.mode = mode
        self.keep_every = keep_every
        self.best: Optional[float] = None
        self.best_iteration: Optional[int] = None

    def is_better(self, value: Optional[float]) -> bool:
        if value is None or value != value:  # NaN never wins
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def state(self) -> Dict[str, Any]:
        """What checkpoints (and train_det's eval.json) record about the best so far."""
        return {"best_metric": self.best, "best_metric_name": self.metric, "best_iteration": self.best_iteration}

    def save(self, state: Dict[str, Any], *, metrics: Optional[Dict[str, float]] = None, epoch: int = 0,
             iteration: Optional[int] = None) -> bool:
        """Save last.pt (and best.pt if metrics[metric] improved, recording `iteration`); with keep_every, also
        epoch_N.pt (keep_unit "epoch": saves with metrics, N = epoch) or iter_N.pt (keep_unit "iter": every save,
        N = iteration) when N % keep_every == 0 (train.keep_every). Returns whether this was the best so far."""
        value = (metrics or {}).get(self.metric)
        improved = self.is_better(value)
        if improved:
            self.best, self.best_iteration = float(value), iteration
        state = dict(state, **self.state())
        save_atomic(state, self.folder / LAST)
        if improved:
            save_atomic(state, self.folder / BEST)
        kept = epoch if self.keep_unit == "epoch" and metrics is not None else None
        kept = iteration if self.keep_unit == "iter" else kept
        if self.keep_every and kept is not None and kept % self.keep_every == 0:
            save_atomic(state, self.folder / f"{self.keep_unit}_{kept}.pt")
        return improved

    def load_best(self, state: Dict[str, Any]) -> None:
        """The best so far from a resumed checkpoint (a record of another metric is not this one's best)."""
        if state.get("best_metric") is not None and state.get("best_metric_name", self.metric) == self.metric:
            self.best, self.best_iteration = float(state["best_metric"]), state.get("best_iteration")


class Checkpointer:
    """The one writer and loader of training checkpoints (fvcore's Checkpointer(model, save_dir, **checkpointables)).

        checkpointer = Checkpointer(model, OUTPUT / "checkpoints", is_main=rank == 0, task="det",
                                    config=lambda: to_dict(cfg), optimizer=opt, scheduler=sched, scaler=None,
                                    ema=None, trainer=trainer)
        checkpointer.save("last", also=("iter_100",), categories=[...])   # every rank calls it
        state = checkpointer.resume_or_load(True)                         # None: nothing to resume from

    Each checkpointable has state_dict() / load_state_dict() (None: not kept by this run). The file holds the one
    schema of weights.checkpoint (module docstring), written by rank 0 through save_atomic after every rank's RNG
    states are gathered.
    """

    KEYS = ("optimizer", "scheduler", "scaler", "ema")

    def __init__(self, model: torch.nn.Module, folder: PathLike, *, is_main: bool, rank: int = 0,
                 task: Optional[str] = None, config=None, **checkpointables: Any):
        unknown = set(checkpointables) - set(self.KEYS) - {"trainer"}
        if unknown:
            raise TypeError(f"Checkpointer: unknown checkpointables {sorted(unknown)}")
        self.model, self.folder, self.is_main, self.rank, self.task = model, Path(folder), is_main, rank, task
        self.config = config if callable(config) else (lambda: config)
        self.checkpointables = checkpointables
        self.saved_iteration: Optional[int] = None  # the trainer iteration of the latest save

    def state(self, **extras: Any) -> Dict[str, Any]:
        """The checkpoint of this moment (a collective under DDP: every rank's RNG states are gathered)."""
        trainer = self.checkpointables.get("trainer")
        state: Dict[str, Any] = {"task": self.task, "model": self.model.state_dict()}
        for key in self.KEYS:
            obj = self.checkpointables.get(key)
            state[key] = obj.state_dict() if obj is not None else None
        state["rng"] = gathered_rng_state()
        state["trainer"] = trainer.state_dict() if trainer is not None else {}
        state["config"] = self.config()
        state["extras"] = dict(extras)
        return dict(state, **script_keys(state))

    def save(self, name: str = "last", *, also: Tuple[str, ...] = (), **extras: Any) -> Optional[Path]:
        """Write folder/<name>.pt (and the same state to each of `also`) on rank 0; every rank must call it.
        Returns the path written (None on the other ranks)."""
        state = self.state(**extras)
        self.saved_iteration = state["trainer"].get("iteration")
        if not self.is_main:
            return None
        path = save_atomic(state, self.folder / f"{name}.pt")
        for other in also:
            save_atomic(state, self.folder / f"{other}.pt")
        return path

    def resume_or_load(self, resume: Union[bool, str, os.PathLike], *, output: PathLike,
                       map_location: Union[str, torch.device] = "cpu") -> Optional[Dict[str, Any]]:
        """Find the checkpoint of `resume` (find_resume_checkpoint: True = the last of `output`, or a path), load
        the model (strictly: another shape is refused naming both), every checkpointable and this rank's RNG
        states; returns the upgraded checkpoint with "path" added (its "extras" unprocessed), None when there is
        nothing to resume from."""
        path, note = find_resume_checkpoint(output, resume)
        if note and self.is_main:
            print(note, flush=True)
        if path is None:
            return None
        checkpoint = TrainingCheckpoint.read(path, map_location)
        if not checkpoint.is_training_checkpoint:
            raise CheckpointError(f"{checkpoint.path} is not a training checkpoint (no 'model' entry)")
        state = dict(checkpoint.state, path=checkpoint.path)
        load_matching_state(self.model, state["model"], checkpoint=path, model_source="the config")
        for key in self.KEYS:
            obj = self.checkpointables.get(key)
            if obj is None or not state.get(key):
                continue
            if key == "optimizer":
                load_optimizer_state(obj, state, checkpoint=path)
            else:
                obj.load_state_dict(state[key])
        if self.checkpointables.get("trainer") is not None:
            self.checkpointables["trainer"].load_state_dict(state["trainer"])
        if state.get("rng"):
            restore_rng_state(state["rng"], self.rank)
        self.saved_iteration = state["trainer"].get("iteration")
        return state


def script_keys(state: Dict[str, Any]) -> Dict[str, Any]:
    """Top-level copies of the schema's values under the names of the layouts before it, for the scripts and tests
    that read those from the file directly: "iteration", every entry of "extras" ("config_changes", "classes",
    "label_to_category", ...), the best so far ("best_metric", "best_metric_name", "best_iteration") and
    classification's "global_iter". Never read back by this package (weights.checkpoint.upgrade takes "trainer" and
    "extras" when present); drop them once no such reader is left."""
    trainer = state["trainer"]
    keys: Dict[str, Any] = {"iteration": trainer.get("iteration"), **state["extras"]}
    keys.update((trainer.get("hooks") or {}).get("BestCheckpointer") or {})
    if state["task"] == "cls":
        keys["global_iter"] = trainer.get("iteration")
    return keys
