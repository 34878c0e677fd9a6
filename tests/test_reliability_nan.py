"""A diverging run (learning rate 1e20, no warm-up) through the real tools: training stops at the first non-finite
loss with exit status 3 and a message naming the iteration, and the checkpoint of the last finite step stays
loadable (finite weights, the iteration before the failure). tests/test_engine_trainer.py checks the same for
ClsTrainer in-process; here it is the command lines of both tools (train_cls saving every iteration)."""
import importlib.util
import os
import subprocess
import sys

import torch

from conftest import REPO
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.engine.checkpoint import load_checkpoint


def _finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def test_train_cls_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path):
    data = write_image_folder(tmp_path / "shapes", train_per_class=4, val_per_class=1)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_cls.py"), "--data", str(data), "--output", str(out),
         "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--lr", "1e20",
         "model.arch=cifar_resnet", "model.options={depth: 8, widths: [4, 8, 8]}", "solver.warmup=0",
         "train.checkpoint_period=1", "train.progress=false", "train.tensorboard=false"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 3, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    # Either the loss itself is non-finite, or a finite loss came with non-finite gradients and the weights
    # went bad: then the checkpoint is not written either.
    assert any(w in line for w in ("loss is nan", "loss is inf", "weights became non-finite")), line
    assert "last good checkpoint is kept" in line and "last.pt" in line, line
    failed_at = int(line.split("iteration ")[1].split()[0].rstrip(",;("))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["global_iter"] == failed_at - 1 and _finite(state["model"])


def test_train_det_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("reliability_nan_train_det", REPO / "tools" / "train_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "out"
    code = tool.main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(out), "--device", "cpu",
                      "data.train.num_images=4", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=2",
                      f"data.val.root={tmp_path / 'val'}", "solver.ims_per_batch=2", "solver.base_lr=1e20",
                      "solver.warmup_iters=0", "solver.max_iter=4", "train.checkpoint_period=1",
                      "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "loss is nan" in err[0] or "loss is inf" in err[0], (code, err)
    failed_at = int(err[0].split("iteration ")[1].split()[0])
    state = torch.load(out / "last.pt", weights_only=True)
    # The failing step is not saved: the checkpoint is the last finite one (iterations count completed steps).
    assert state["iteration"] == failed_at and _finite(state["model"]), (state["iteration"], failed_at)
