"""Helpers shared by the kill/resume tests of tools/train_cls.py (test_train_cls_resume.py,
test_reliability_checkpoint_kill.py, test_reliability_ddp_soak.py): run the tool as a subprocess, then compare the
final checkpoint and metrics of an interrupted-and-resumed run with those of an uninterrupted reference run.

Imported like conftest (pytest puts tests/ on sys.path): `from helpers_training import ...`.
"""
import csv
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import torch

from conftest import REPO

TOOL = str(REPO / "tools" / "train_cls.py")


def train_env(**extra: str) -> Dict[str, str]:
    """The environment of every training subprocess: one OpenMP thread, a fixed hash seed (deterministic runs)."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **extra)


def run_ok(cmd: Sequence[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run cmd to completion (captured text output, train_env()) and assert it exited 0."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=train_env(), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def flat(state, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint (dicts/lists), keyed by path."""
    out = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for key, value in state.items():
            out.update(flat(value, f"{prefix}/{key}"))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            out.update(flat(value, f"{prefix}/{i}"))
    return out


def assert_same_checkpoint(ref_path: Path, got_path: Path, parts: Iterable[str], *, global_iter: int) -> None:
    """Both checkpoints end at global_iter and every tensor of each part (model, optimizer, ...) is equal."""
    ref_state = torch.load(ref_path, weights_only=True)
    got_state = torch.load(got_path, weights_only=True)
    assert got_state["global_iter"] == ref_state["global_iter"] == global_iter
    for part in parts:
        ref, got = flat(ref_state[part]), flat(got_state[part])
        assert ref.keys() == got.keys(), part
        differing = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not differing, f"{part}: {differing[:5]}"


def assert_same_metrics(ref_dir: Path, got_dir: Path, *, epochs: List[str], columns: Iterable[str]) -> None:
    """got_dir/metrics.csv has one row per epoch in `epochs` and the same values as ref_dir's in `columns`."""
    with open(Path(ref_dir) / "metrics.csv") as handle:
        ref_rows = list(csv.DictReader(handle))
    with open(Path(got_dir) / "metrics.csv") as handle:
        got_rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in got_rows] == epochs
    for column in columns:
        assert [r[column] for r in ref_rows] == [r[column] for r in got_rows], column
