"""Issue 21, item 3: a resume records the truth (engine/resume_changes.py and both trainers).

A changed key is applied from the resume iteration and recorded (config.yaml, checkpoint, train_det's eval.json), or
refused with one line naming the key and both values, before anything is written; metrics.csv keeps its columns; a
mid-epoch stop resumes mid-epoch, bit-identically; every early stop (time limit, SIGINT, SIGTERM) says so.
"""
import csv
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_train_det_args
from helpers_training import TOOL, assert_same_checkpoint, train_env
from resbackbones.config import ConfigError, load_config, to_dict
from resbackbones.config.cls import ClsConfig
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.engine.metrics_log import MetricsLogger
from resbackbones.engine.resume_changes import (APPLY, IGNORE, LENGTH, REFUSE, ConfigChange, apply_solver_changes,
                                                compare_resume_config, fresh_solver_state, read_config_changes,
                                                rule_for)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_cls = _load("train_cls_resume_truth", REPO / "tools" / "train_cls.py")
train_det = _load("train_det_resume_truth", REPO / "tools" / "train_det.py")


def listing(folder: Path) -> dict:
    """Every file under folder with its size and mtime: what a refused command must leave as it was (but .lock,
    which every claim of the folder rewrites: engine/outputs.claim_run_dir)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if p.name != ".lock"}


def csv_rows(path: Path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


# -- the table and the comparison ------------------------------------------------------------------------------
def test_policy_table():
    assert rule_for("solver.base_lr")[0] == APPLY and rule_for("solver.steps")[0] == APPLY
    assert rule_for("train.time_limit_s")[0] == APPLY and rule_for("data.num_workers")[0] == APPLY
    assert rule_for("test.batch_size")[0] == APPLY and rule_for("model.channels_last")[0] == APPLY
    assert rule_for("solver.max_iter")[0] == LENGTH and rule_for("solver.epochs")[0] == LENGTH
    for key in ("model.backbone.name", "model.backbone.options", "model.num_classes", "data.root",
                "data.train.ann_file", "solver.batch_size", "solver.optimizer", "train.seed", "a.new.key"):
        assert rule_for(key)[0] == REFUSE, key
    assert rule_for("train.output_dir")[0] == IGNORE


def _cls(*overrides):
    return load_config(ClsConfig, None, list(overrides))


def test_compare_applies_refuses_and_names_both_values():
    recorded = to_dict(_cls("solver.base_lr=0.1"))
    changes = compare_resume_config(recorded, _cls("solver.base_lr=0.05", "train.output_dir=elsewhere"),
                                    task="cls", checkpoint="last.pt", iteration=7, total_iters=100)
    assert changes == [ConfigChange("solver.base_lr", 0.1, 0.05, 7)]
    assert changes[0].line() == "resume: solver.base_lr 0.1 -> 0.05 from iteration 7"
    with pytest.raises(ConfigError) as error:
        compare_resume_config(recorded, _cls("model.backbone.name=cifar_resnet56"), task="cls",
                              checkpoint="last.pt", iteration=7, total_iters=100)
    message = str(error.value)
    assert "\n" not in message and "model.backbone.name" in message
    assert "cifar_resnet56" in message and "model.backbone.name=cifar_resnet20" in message
    with pytest.raises(ConfigError, match=r"solver.max_iter=5 is at or below the checkpoint's position "
                                          r"\(iteration 7\)"):
        compare_resume_config(recorded, _cls("solver.max_iter=5"), task="cls", checkpoint="last.pt", iteration=7,
                              total_iters=5)
    # A checkpoint written before the vocabulary change (solver.lr) compares in today's names.
    old = dict(recorded, solver={**{k: v for k, v in recorded["solver"].items() if k != "base_lr"}, "lr": 0.1})
    assert compare_resume_config(old, _cls("solver.base_lr=0.1"), task="cls", checkpoint="x", iteration=7,
                                 total_iters=100) == []
    assert compare_resume_config(None, _cls(), task="cls", checkpoint="x", iteration=7, total_iters=100) == []


def test_applied_lr_is_the_lr_trained_on_after_resume():
    """LambdaLR keeps base_lrs and the groups' lr in its state: loaded alone they keep the checkpoint's lr."""
    def solver(lr):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        lam = lambda it: 0.1 ** (it >= 4)  # noqa: E731
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lam), lam

    optimizer, scheduler, lam = solver(0.1)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict(), scheduler.state_dict()
    optimizer, scheduler, _ = solver(0.05)
    fresh = fresh_solver_state(optimizer, scheduler)
    optimizer.load_state_dict(state[0])
    scheduler.load_state_dict(state[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # what resumes did before
    apply_solver_changes(optimizer, scheduler, fresh, [ConfigChange("solver.base_lr", 0.1, 0.05, 3)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * lam(3))
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * lam(4))


def test_metrics_keep_every_column_on_resume(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, index_key="iter")
    logger.log({"iter": 1, "lr": 0.1, "loss": 2.0})
    logger.log({"iter": 1, "bbox_AP": 0.0})
    resumed = MetricsLogger(tmp_path, tensorboard=False, index_key="iter")
    resumed.resume(1)
    resumed.log({"iter": 1, "bbox_AP": 0.5})  # an evaluation row first: it must not decide the columns
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "iter,lr,loss,bbox_AP"


# -- train_cls --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 10 classes x 12 = 120 train images -> 7 iterations/epoch of 16.
    return write_image_folder(tmp_path_factory.mktemp("syn") / "shapes", train_per_class=12, val_per_class=3)


def cls_args(data, out, *extra):
    return ["--data", str(data), "--output", str(out), "--batch-size", "16", "--workers", "0", "--device", "cpu",
            "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [8, 8, 16]}",
            "train.deterministic=true", "train.progress=false", "train.tensorboard=false", "solver.warmup=0",
            "solver.schedule=constant", *extra]


def run_cls(capsys, *args):
    code = train_cls.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cls_resume_applies_a_new_lr_and_records_it(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cls(capsys, *cls_args(data, out, "--epochs", "1"))[0] == 0
    code, stdout, _ = run_cls(capsys, *cls_args(data, out, "--epochs", "2", "--resume", "solver.base_lr=0.05"))
    assert code == 0
    assert "resume: solver.base_lr 0.1 -> 0.05 from iteration 7" in stdout
    assert "lr 0.00625" in stdout  # 0.05 * 16 / 128: the lr printed is the lr trained on
    assert [float(r["lr"]) for r in csv_rows(out / "metrics.csv")] == [0.0125, 0.00625]
    assert "base_lr: 0.05" in (out / "config.yaml").read_text()
    assert ConfigChange("solver.base_lr", 0.1, 0.05, 7) in read_config_changes(out / "config.yaml")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.00625)
    assert {"key": "solver.base_lr", "old": 0.1, "new": 0.05, "iteration": 7} in state["config_changes"]


def test_cls_refused_resume_names_the_key_and_leaves_the_folder_as_it_was(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cls(capsys, *cls_args(data, out, "--epochs", "2"))[0] == 0
    before = listing(out)
    cases = {("solver.batch_size=8",): ["solver.batch_size is 8 here but 16"],
             ("--epochs", "1"): ["solver.epochs=1 is at or below", "epoch 2 + 0 iterations, iteration 14",
                                 "solver.epochs >= 3"],
             # Same shapes, so the weights would load: only the recorded config tells the models apart.
             ("model.backbone.options={depth: 8, widths: [8, 8, 16], zero_init_residual: true}",):
                 ["model.backbone.options is {", '"zero_init_residual": true}', 'but {"depth": 8, "widths": [8, 8, 16]}']}
    for extra, expected in cases.items():
        code, _, err = run_cls(capsys, *cls_args(data, out, "--epochs", "2", *extra, "--resume"))
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and all(e in err for e in expected), err
        assert listing(out) == before, extra
    # A refused --resume CKPT into a new folder leaves nothing a fresh run would call "not empty".
    fresh = tmp_path / "fresh"
    code, _, err = run_cls(capsys, *cls_args(data, fresh, "--epochs", "2", "train.tensorboard=true", "train.seed=1",
                                             "--resume", out / "checkpoints" / "last.pt"))
    assert code == 2 and "train.seed is 1 here but 0" in err
    assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
    assert run_cls(capsys, *cls_args(data, fresh, "--epochs", "1"))[0] == 0


def test_cls_time_limit_stops_mid_epoch_and_resumes_bit_identically(data, tmp_path, capsys):
    assert run_cls(capsys, *cls_args(data, tmp_path / "ref", "--epochs", "2"))[0] == 0
    out = tmp_path / "split"
    code, stdout, _ = run_cls(capsys, *cls_args(data, out, "--epochs", "2", "train.time_limit_s=1e-9"))
    assert code == 0
    assert "stopped early by train.time_limit_s (1e-09 s;" in stdout
    assert "at iteration 1 of 14 (0 epochs + 1 iterations)" in stdout and "continue it with --resume" in stdout
    code, stdout, _ = run_cls(capsys, *cls_args(data, out, "--epochs", "2", "train.time_limit_s=0", "--resume"))
    assert code == 0
    assert "resumed from" in stdout and "epoch 0, iteration 1" in stdout
    assert "epoch 1/2" in stdout and "epoch 2/2" in stdout and "epoch 3/" not in stdout
    assert_same_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt",
                           ("model", "optimizer", "scheduler"), global_iter=14)
    ref, got = csv_rows(tmp_path / "ref" / "metrics.csv"), csv_rows(out / "metrics.csv")
    assert [(r["epoch"], r["train_loss"], r["val_top1"]) for r in ref] == \
        [(r["epoch"], r["train_loss"], r["val_top1"]) for r in got]


def test_cls_signals_stop_after_the_step_with_a_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, TOOL, *cls_args(data, out, "--epochs", "200")]
    for attempt, (sig, code) in enumerate(((signal.SIGTERM, 143), (signal.SIGINT, 130))):
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=train_env())
        seen = len(csv_rows(out / "metrics.csv")) if attempt else 0
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:  # signal once an epoch of this process is logged
            if (out / "metrics.csv").is_file() and len(csv_rows(out / "metrics.csv")) > seen:
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == code, stderr[-2000:]
        line = [x for x in stdout.splitlines() if x.startswith("stopped early by")]
        assert len(line) == 1 and f"by {sig.name} at iteration" in line[0] and "--resume" in line[0], stdout
        iteration = int(line[0].split("at iteration ")[1].split()[0])
        assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["global_iter"] == iteration


# -- train_det --------------------------------------------------------------------------------------------------
def test_det_time_limit_lr_change_and_length_refusal(tmp_path_factory, tmp_path, capsys):
    shapes, out = tmp_path_factory.mktemp("shapes"), tmp_path / "run"
    base = tiny_train_det_args(shapes, out, "solver.warmup=0", "solver.schedule=constant")
    args = base + ["solver.max_iter=3"]
    assert train_det.main(args + ["train.time_limit_s=1e-9"]) == 0
    stdout = capsys.readouterr().out
    assert "stopped early by train.time_limit_s" in stdout and "at iteration 1 of 3" in stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["stopped_early"] == {"reason": "time_limit", "iteration": 1, "max_iter": 3, "train_seconds":
                                       report["stopped_early"]["train_seconds"], "time_limit_s": 1e-9}

    assert train_det.main(args + ["--resume", "train.time_limit_s=0", "solver.base_lr=0.0005"]) == 0
    stdout = capsys.readouterr().out
    assert "resume: solver.base_lr 0.0015 -> 0.0005 from iteration 1" in stdout
    rows = [r for r in csv_rows(out / "metrics.csv") if r["loss"]]
    assert [(r["iter"], float(r["lr"])) for r in rows] == [("1", 0.0015), ("2", 0.0005), ("3", 0.0005)]
    report = json.loads((out / "eval.json").read_text())
    assert "stopped_early" not in report and report["iteration"] == 3
    assert {"key": "solver.base_lr", "old": 0.0015, "new": 0.0005, "iteration": 1} in report["config_changes"]
    assert "base_lr: 0.0005" in (out / "config.yaml").read_text()
    assert [c.key for c in read_config_changes(out / "config.yaml")] == ["solver.base_lr", "train.time_limit_s"]

    before = listing(out)
    assert train_det.main(base + ["solver.max_iter=2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "solver.max_iter=2 is at or below the checkpoint's position (iteration 3)" in err
    assert listing(out) == before  # metrics.csv keeps its loss columns: nothing was rewritten


def test_det_signal_saves_says_so_and_marks_eval_json(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """SIGINT during train_det (sent by the process to itself after the first step): the step finishes, a
    checkpoint is saved, one line says so, eval.json says the run stopped early (no evaluation), exit 130."""
    import os

    from resbackbones.engine.det_trainer import DetTrainer

    real_step = DetTrainer.run_step

    def step_then_signal(self, batch):
        result = real_step(self, batch)
        if self.iter == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(DetTrainer, "run_step", step_then_signal)
    out = tmp_path / "run"
    assert train_det.main(tiny_train_det_args(tmp_path_factory.mktemp("shapes"), out, "solver.max_iter=3")) == 130
    captured = capsys.readouterr()
    assert "stopped early by SIGINT at iteration 1 of 3" in captured.out and "--resume" in captured.err
    report = json.loads((out / "eval.json").read_text())
    assert report["stopped_early"]["reason"] == "SIGINT" and report["stopped_early"]["iteration"] == 1
    assert "bbox" not in report  # not evaluated: nothing in it reads as a final result
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
