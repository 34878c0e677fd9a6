"""Soak: a 2-process gloo DDP training (torchrun, CPU) whose rank-1 worker is SIGKILLed mid-run is brought back by
`--resume` from the last checkpoint and ends exactly where an uninterrupted DDP run ends (every tensor of the
model, optimizer and scheduler state equal, the same metrics). torchrun notices the dead worker, stops the other
one and exits non-zero; rank 0 alone writes checkpoints (atomically), so last.pt is whole whenever the kill lands.

Three torchrun launches of a tiny GroupNorm CIFAR ResNet, about a minute on 2 shared cores.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_training import TOOL, assert_same_checkpoint, assert_same_metrics, run_ok, train_env
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.engine.checkpoint import load_checkpoint

COMMON = ["--epochs", "3", "--batch-size", "16", "--workers", "0", "--device", "cpu", "model.backbone.name=cifar_resnet",
          "model.backbone.options={depth: 8, widths: [8, 8, 16], norm: GN}", "train.progress=false", "train.tensorboard=false",
          "solver.base_lr=0.05", "train.deterministic=true", "train.checkpoint_period=2"]


def _torchrun(data, out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TOOL,
            "--data", str(data), "--output", str(out), *COMMON, *extra]


def _worker_pid(parent: int, rank: int):
    """pid of the torchrun child whose environment has RANK=rank (None while not started)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def test_ddp_worker_killed_then_resumed_matches_uninterrupted(tmp_path):
    data = write_image_folder(tmp_path / "shapes", train_per_class=12, val_per_class=3)  # 7 it/epoch of 16
    run_ok(_torchrun(data, tmp_path / "ref"))

    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_torchrun(data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=train_env())
    killed_at = None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if last.is_file():  # a first checkpoint exists: kill rank 1 in the middle of the run
            pid = _worker_pid(proc.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_at = load_checkpoint(last)["global_iter"]
                break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=300)
    assert killed_at is not None, "the run ended before a worker could be killed"
    assert proc.returncode != 0, "torchrun did not report the killed worker"
    survived = load_checkpoint(last)  # whole and loadable after the kill
    assert 2 <= survived["global_iter"] < 21, survived["global_iter"]

    resumed = run_ok(_torchrun(data, out, "--resume"))
    assert "resumed from" in resumed.stdout
    assert not [p.name for p in last.parent.iterdir() if ".tmp-" in p.name]  # rank 0 cleaned any dead writer's

    assert_same_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", last, ("model", "optimizer", "scheduler"),
                           global_iter=21)
    assert_same_metrics(tmp_path / "ref", out, epochs=["1", "2", "3"],
                        columns=("train_loss", "train_top1", "val_top1", "val_loss"))
