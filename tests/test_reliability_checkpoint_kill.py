"""kill -9 *inside* a checkpoint write, at three points, never leaves a corrupt or missing last checkpoint, and
the run resumed after each kill ends bit-identical to an uninterrupted one (deterministic CPU).

tests/test_train_cls_resume.py kills between writes (as soon as a new last.pt appears). Here a small wrapper
(KILL_SHIM, written to tmp) runs the real tools/train_cls.py after patching the calls save_atomic makes, and
SIGKILLs its own process at the n-th save of last.pt:
  mid_write      torch.save has written half the bytes of the temp file (a torn file on disk),
  before_rename  the temp file is complete and fsync'ed, os.replace has not run,
  after_rename   os.replace has run, the folder fsync has not.
The shim appends the global_iter of every *completed* save to saves.log, so after each kill the test knows which
state last.pt must hold: the previous save for the first two points, the new one for the third.
The first two kills leave the killed writer's temp file (".last.pt.tmp-<pid>"); the next run's first save removes
it (its writer is gone), so no stale temp file remains after the resumed run.
"""
import signal
import subprocess
import sys

from helpers_training import TOOL, assert_same_checkpoint, assert_same_metrics, run_ok, train_env
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.engine.checkpoint import load_checkpoint

KILL_SHIM = r'''
import io, os, runpy, signal, sys
import torch
mode, nth, log = os.environ["KILL_MODE"], int(os.environ["KILL_AT"]), os.environ["KILL_LOG"]
count = {"n": 0}
pending = {}
real_save, real_replace = torch.save, os.replace

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def save(obj, f, *a, **k):
    name = getattr(f, "name", str(f))
    if ".last.pt.tmp" in str(name):
        count["n"] += 1
        pending["iter"] = obj.get("global_iter")
        if mode == "mid_write" and count["n"] == nth:
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **k)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()
    return real_save(obj, f, *a, **k)

def replace(src, dst, *a, **k):
    last = str(dst).endswith("last.pt")
    if last and mode == "before_rename" and count["n"] == nth:
        die()
    result = real_replace(src, dst, *a, **k)
    if last:
        with open(log, "a") as handle:
            handle.write(f"{pending.get('iter')}\n")
        if mode == "after_rename" and count["n"] == nth:
            die()
    return result

torch.save, os.replace = save, replace
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python tools/x.py` does: _cli.py beside it
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def tool_args(data, out):
    return ["--data", str(data), "--output", str(out), "--epochs", "2", "--batch-size", "16", "--workers", "0",
            "--device", "cpu", "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}",
            "train.deterministic=true", "train.checkpoint_period=2", "train.progress=false",
            "train.tensorboard=false", "ema.enabled=true", "ema.warmup_steps=3"]


def test_kill9_inside_checkpoint_writes(tmp_path):
    data = write_image_folder(tmp_path / "shapes", train_per_class=12, val_per_class=3)  # 7 it/epoch of 16
    shim = tmp_path / "kill_shim.py"
    shim.write_text(KILL_SHIM)
    run_ok([sys.executable, TOOL, *tool_args(data, tmp_path / "ref")])

    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.pt"
    log = tmp_path / "saves.log"
    plan = [("mid_write", 2), ("before_rename", 2), ("after_rename", 2)]
    for attempt, (mode, nth) in enumerate(plan):
        cmd = [sys.executable, str(shim), TOOL, *tool_args(data, out)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=train_env(KILL_MODE=mode, KILL_AT=str(nth), KILL_LOG=str(log)))
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, (mode, proc.returncode, stderr[-3000:])
        completed = [int(x) for x in log.read_text().split()]
        # Never missing, never torn: weights_only load works and holds the last *completed* save.
        state = load_checkpoint(last)
        assert state["global_iter"] == completed[-1], (mode, state["global_iter"], completed)
        if mode == "after_rename":
            assert completed[-1] > completed[-2]
        # Killed before the rename: its temp file (named by its pid) stays behind; the previous killed writer's
        # was removed by this run's first save. Resume must not be confused by either.
        leftovers = sorted(p.name for p in last.parent.iterdir() if ".tmp-" in p.name)
        assert leftovers == ([] if mode == "after_rename" else [f".last.pt.tmp-{proc.pid}"]), (mode, leftovers)

    final = run_ok([sys.executable, TOOL, *tool_args(data, out), "--resume"])
    assert "resumed from" in final.stdout
    stale = sorted(p.name for p in last.parent.iterdir() if ".tmp-" in p.name)
    assert not stale, stale

    assert_same_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", last,
                           ("model", "optimizer", "ema", "scheduler"), global_iter=14)
    assert_same_metrics(tmp_path / "ref", out, epochs=["1", "2"],
                        columns=("train_loss", "train_top1", "val_top1", "val_loss", "lr"))
