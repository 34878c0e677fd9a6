"""A diverging run (learning rate 1e20, no warm-up) through the real tools: training stops at the first non-finite
loss with exit status 3 and a message naming the iteration, and the checkpoint of the last finite step stays
loadable (finite weights, the iteration before the failure). tests/test_engine_trainer.py checks the same for
ClsTrainer in-process; here it is the command lines of both tools (train_cls saving every iteration).

A finite loss with non-finite gradients (forced by a hook that writes inf into one parameter's gradient) stops both
tools the same way, before the optimizer step, naming the iteration and that parameter."""
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
         "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}", "solver.warmup=0",
         "train.checkpoint_period=1", "train.progress=false", "train.tensorboard=false"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 3, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    # Either the loss itself is non-finite, or a finite loss came with non-finite gradients and the weights
    # went bad: then the checkpoint is not written either.
    assert any(w in line for w in ("loss is nan", "loss is inf", "gradients are non-finite",
                                   "weights became non-finite")), line
    assert "last good checkpoint is kept" in line and "last.pt" in line, line
    failed_at = int(line.split("iteration ")[1].split()[0].rstrip(",;("))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["global_iter"] == failed_at - 1 and _finite(state["model"])


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"reliability_nan_{name}", REPO / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _poison_gradients_at(monkeypatch, trainer_class, iteration, poisoned, pick):
    """Make the trainers built from now on write inf into one parameter's gradient (picked from the trainable
    (name, parameter) list) at step `iteration` (counted from 0), through an after_backward hook of the loop core:
    the loss stays finite. Appends the parameter's name to `poisoned`."""
    from resbackbones.engine.loop import HookBase

    class Poison(HookBase):
        def after_backward(self, trainer):
            if trainer.iter == iteration:
                name, param = pick([(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad])
                param.grad.fill_(float("inf"))
                poisoned.append(name)

    init = trainer_class.__init__

    def with_poison(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.register_hooks([Poison()])

    monkeypatch.setattr(trainer_class, "__init__", with_poison)


def test_train_det_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    tool = _tool("train_det")
    out = tmp_path / "out"
    code = tool.main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(out), "--device", "cpu",
                      "data.train.num_images=4", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=2",
                      f"data.val.root={tmp_path / 'val'}", "solver.batch_size=2", "solver.base_lr=1e20",
                      "solver.warmup=0", "solver.max_iter=4", "train.checkpoint_period=1",
                      "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, (code, err)
    assert any(w in err[0] for w in ("loss is nan", "loss is inf", "gradients are non-finite")), err
    failed_at = int(err[0].split("iteration ")[1].split()[0])
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    # The failing step is not saved: the checkpoint is the last finite one (iterations count completed steps).
    assert state["iteration"] == failed_at and _finite(state["model"]), (state["iteration"], failed_at)


def test_train_det_stops_on_non_finite_gradients_of_a_finite_loss(tmp_path, capsys, monkeypatch):
    from resbackbones.engine.det_trainer import DetTrainer

    poisoned = []
    # The third step (counted from 0: 2): two checkpoints are written before it.
    _poison_gradients_at(monkeypatch, DetTrainer, 2, poisoned, lambda named: next(
        (n, p) for n, p in named if n.startswith("roi_heads.box_predictor.cls_score")))
    out = tmp_path / "out"
    # quickstart.yaml clips gradients (solver.clip_grad_norm): the check runs on the norm the clipping computes.
    code = _tool("train_det").main([
        "--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(out), "--device", "cpu",
        "data.train.num_images=4", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=2",
        f"data.val.root={tmp_path / 'val'}", "solver.batch_size=2", "solver.max_iter=4",
        "train.checkpoint_period=1", "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, (code, err)
    line = err[0]
    assert line.startswith("error: gradients are non-finite at iteration 2 ("), line
    assert f"first non-finite gradient: {poisoned[0]};" in line and "loss " in line, line
    assert f"the last good checkpoint is kept: {out / 'checkpoints' / 'last.pt'}" in line, line
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and _finite(state["model"])
    assert all(_finite(buffers) for buffers in state["optimizer"]["state"].values())  # momentum too


def test_train_cls_stops_on_non_finite_gradients_of_a_finite_loss(tmp_path, capsys, monkeypatch):
    from resbackbones.engine.cls_trainer import ClsTrainer

    poisoned = []
    _poison_gradients_at(monkeypatch, ClsTrainer, 2, poisoned,  # the third step; no gradient clipping configured
                         lambda named: named[len(named) // 2])
    data = write_image_folder(tmp_path / "shapes", train_per_class=4, val_per_class=1)
    out = tmp_path / "out"
    code = _tool("train_cls").main([
        "--data", str(data), "--output", str(out), "--epochs", "1", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}",
        "train.checkpoint_period=1", "train.progress=false", "train.tensorboard=false", "train.num_threads=1"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3, line
    assert line.startswith("error: gradients are non-finite at epoch 1, iteration 3 ("), line
    assert f"first non-finite gradient: {poisoned[0]};" in line, line
    assert f"the last good checkpoint is kept: {out / 'checkpoints' / 'last.pt'}" in line, line
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["global_iter"] == 2 and _finite(state["model"])
