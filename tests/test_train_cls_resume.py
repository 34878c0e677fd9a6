"""Kill -9 and resume: the resumed run ends bit-identical to an uninterrupted one (deterministic, CPU).

Both runs are tools/train_cls.py subprocesses on a tiny synthetic ImageFolder (written once to tmp) with a
4-iteration checkpoint period, so kills land both mid-epoch and at epoch ends. Every tensor of the final
model, optimizer and EMA state is compared with torch.equal, and the per-epoch train losses must match exactly.
"""
import signal
import subprocess
import sys
import time

import pytest

from helpers_training import TOOL, assert_same_checkpoint, assert_same_metrics, run_ok, train_env
from resbackbones.data.synthetic_cls import write_image_folder


def args_for(data, out):
    return [sys.executable, TOOL, "--data", str(data), "--output", str(out), "--epochs", "3", "--batch-size", "16",
            "--workers", "1", "--device", "cpu", "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [8, 8, 16]}",
            "train.deterministic=true", "train.checkpoint_period=4", "train.progress=false", "train.tensorboard=false",
            "ema.enabled=true", "ema.warmup_steps=5", "loss.label_smoothing=0.1", "solver.clip_grad_norm=5.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 10 classes x 12 = 120 train images -> 7 iterations/epoch of 16.
    return write_image_folder(tmp_path_factory.mktemp("syn") / "shapes", train_per_class=12, val_per_class=3)


def test_kill9_and_resume_is_bit_identical(data, tmp_path):
    run_ok(args_for(data, tmp_path / "ref"))

    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.pt"
    kills, seen = 0, 0.0
    for attempt in range(6):
        cmd = args_for(data, out) + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=train_env())
        # Kill as soon as a checkpoint newer than the one we resumed from appears.
        while proc.poll() is None:
            if last.is_file() and last.stat().st_mtime > seen and kills < 2:
                time.sleep(0.05)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                seen = last.stat().st_mtime
                break
            time.sleep(0.02)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert proc.returncode == 0 and kills == 2, (kills, proc.returncode)
    assert "resumed from" in proc.stdout.read()

    assert_same_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", last,
                           ("model", "optimizer", "ema", "scheduler"), global_iter=21)
    assert_same_metrics(tmp_path / "ref", out, epochs=["1", "2", "3"],
                        columns=("train_loss", "train_top1", "val_top1", "val_loss", "lr"))
