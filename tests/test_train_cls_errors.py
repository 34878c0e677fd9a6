"""User mistakes through tools/train_cls.py: one line on stderr naming the key/file, exit code 2."""
import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO

TOOL = str(REPO / "tools" / "train_cls.py")


def _load_tool():
    spec = importlib.util.spec_from_file_location("train_cls_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL_MODULE = _load_tool()


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_tool(capsys):
    """main(argv) in this process (no interpreter start-up per case); returns exit code and captured output."""

    def run(*args):
        code = TOOL_MODULE.main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def one_line_error(result):
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_process_exit_code_and_one_line(tmp_path):
    """The real command line: exit status 2 and a single stderr line."""
    result = subprocess.run([sys.executable, TOOL, "--output", str(tmp_path), "solver.base_lrr=0.1"], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    line = one_line_error(result)
    assert line.startswith("error: ") and "did you mean 'solver.base_lr'" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (["solver.base_lrr=0.1"], ["'solver.base_lrr'", "did you mean 'solver.base_lr'"]),
        (["modle.backbone.name=resnet18"], ["'modle.backbone.name'", "did you mean 'model.backbone.name'"]),
        (["solver.epochs=abc"], ["'solver.epochs'", "expected int", "'abc'"]),
        (["train.amp=fp8"], ["'train.amp'", "'bf16'", "'fp8'"]),
        (["solver.base_lr"], ["bad override 'solver.base_lr'", "key=value"]),
        (["--config", "/nonexistent/cls.yaml"], ["config file not found: /nonexistent/cls.yaml"]),
        (["--arch", "resnet51"], ["unknown backbone 'resnet51'", "resnet50"]),
    ],
)
def test_config_errors(args, words, tmp_path, run_tool):
    line = one_line_error(run_tool("--output", tmp_path, *args))
    for word in words:
        assert word in line, line


def test_typo_in_config_file_names_file_and_key(tmp_path, run_tool):
    config = tmp_path / "bad.yaml"
    config.write_text("_base_: " + str(REPO / "configs/cls/default.yaml") + "\nsolver:\n  wieght_decay: 0.1\n")
    line = one_line_error(run_tool("--config", config, "--output", tmp_path / "out"))
    assert str(config) in line and "'solver.wieght_decay'" in line and "'solver.weight_decay'" in line


def _image_folder(root, classes=("a", "b"), per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(root / split / name / f"{i}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return root


TINY = ["model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}", "--batch-size", "4",
        "--epochs", "1", "--device", "cpu", "train.progress=false", "train.tensorboard=false"]


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_named(tmp_path, workers, run_tool):
    data = _image_folder(tmp_path / "data")
    bad = data / "train" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = one_line_error(run_tool("--data", data, "--output", tmp_path / "out", "--workers", workers, *TINY))
    assert str(bad) in line, line


def test_unreadable_class_folder_named(tmp_path, run_tool):
    data = _image_folder(tmp_path / "data")
    broken = data / "train" / "c"
    os.symlink(tmp_path / "gone", broken)
    line = one_line_error(run_tool("--data", data, "--output", tmp_path / "out", "--workers", 0, *TINY))
    assert str(broken) in line, line


def test_missing_split_named(tmp_path, run_tool):
    data = _image_folder(tmp_path / "data")
    (data / "val").rename(data / "holdout")
    line = one_line_error(run_tool("--data", data, "--output", tmp_path / "out", "--workers", 0, *TINY))
    assert "val" in line and "test" in line and str(data) in line, line


def test_missing_weights_named(tmp_path, run_tool):
    data = _image_folder(tmp_path / "data")
    line = one_line_error(run_tool("--data", data, "--output", tmp_path / "out", "--eval-only",
                                   "--weights", tmp_path / "nope.safetensors", *TINY))
    assert "nope.safetensors" in line, line


def test_flags_map_onto_config_keys():
    args = TOOL_MODULE.parse_args(["--config", str(REPO / "configs/cls/cifar_resnet20.yaml"), "solver.gamma=0.2",
                                   "--epochs", "3", "--lr", "0.05", "--batch-size", "64", "--arch", "cifar_resnet56",
                                   "--data", "/d/1", "--workers", "0", "--device", "cpu", "--output", "/o"])
    cfg = TOOL_MODULE.build_config(args)
    # The paper's iteration schedule (64k, /10 at 32k and 48k) keeps its shape at the new length.
    assert cfg.solver.max_iter is None and cfg.solver.epochs == 3
    assert cfg.solver.unit == "fraction" and cfg.solver.steps == (0.5, 0.75)
    assert cfg.solver.base_lr == 0.05 and cfg.solver.reference_batch_size == 0 and cfg.solver.batch_size == 64
    assert cfg.model.backbone.name == "cifar_resnet56" and cfg.data.root == "/d/1" and cfg.data.num_workers == 0
    assert cfg.train.device == "cpu" and cfg.train.output_dir == "/o" and cfg.solver.gamma == 0.2


def test_period_unit_iter_is_refused_for_classification(tmp_path, run_tool):
    data = _image_folder(tmp_path / "data")
    line = one_line_error(run_tool("--data", data, "--output", tmp_path / "out", "--workers", 0, *TINY,
                                   "train.period_unit=iter"))
    assert "train.period_unit" in line and "'epoch'" in line, line
    assert not (tmp_path / "out").exists()


def test_eval_period_zero_evaluates_only_at_the_end(tmp_path, run_tool):
    """train.eval_period: 0 means the same in both tasks: no evaluation before the end of training."""
    import csv

    data = _image_folder(tmp_path / "data")
    result = run_tool("--data", data, "--output", tmp_path / "out", "--workers", 0, *TINY, "--epochs", "3",
                      "train.eval_period=0")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [bool(r["val_top1"]) for r in rows] == [False, False, True], rows
