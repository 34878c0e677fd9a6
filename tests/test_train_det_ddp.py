"""2-process gloo DDP detection (torchrun, CPU): a run stopped at iteration 2 and resumed to 3 ends bit-identical to an
uninterrupted 3-iteration run. What it needs: the data order and flips from (seed, epoch, sample index) only, and each
rank's own RNG (seed + rank; RPN / RoI sampling) saved in the checkpoint and restored on that rank.

Three torchrun launches of the tiny quickstart model (6 train images, batch 2 = 1 per rank), a few minutes on 2
shared cores.
"""
import subprocess
import sys

import torch

from conftest import REPO, tiny_train_det_args
from helpers_training import flat, train_env

TOOL = str(REPO / "tools" / "train_det.py")


def _torchrun(root, out, *extra):
    args = tiny_train_det_args(root, out, "data.flip_prob=0.5", "train.num_threads=1", *extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TOOL, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=train_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "shapes"
    _torchrun(root, tmp_path / "straight", "solver.max_iter=3")
    _torchrun(root, tmp_path / "split", "solver.max_iter=2")
    _torchrun(root, tmp_path / "split", "--resume", "solver.max_iter=3")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 3
    assert len(a["rng"]) == 2 and not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # seed + rank
    for part in ("model", "optimizer"):
        ref, got = flat(a[part]), flat(b[part])
        assert ref.keys() == got.keys()
        differing = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not differing, f"{part}: {differing[:5]}"
