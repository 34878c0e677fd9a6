"""tools/train_d2.py user errors (issue 16): a missing config or dataset, a bad override key / type / odd list, CUDA
asked for on a CPU machine, --eval-only without weights: one line naming the thing and the fix, exit 2, before any
process or output folder is made; Ctrl-C exits 130."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, require_detectron2

require_detectron2()

spec = importlib.util.spec_from_file_location("train_d2_tool", REPO / "tools" / "train_d2.py")
train_d2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_d2)

CONFIG = str(REPO / "configs" / "detectron2" / "mask_rcnn_R_50_FPN_1x.yaml")
CPU = ["MODEL.DEVICE", "cpu"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def data(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "ok.json").write_text(json.dumps({"images": [], "annotations": [],
                                                  "categories": [{"id": 1, "name": "a"}]}))
    (tmp_path / "nocats.json").write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "scalar.yaml").write_text("just a string")
    return tmp_path


def _cases(d):
    out = ["OUTPUT_DIR", str(d / "out")]
    return [
        (["--config-file", str(d / "nope.yaml")], "--config-file"),
        (["--config-file", CONFIG, *CPU, "FOO.BAR", "1", *out], "Non-existent key: FOO.BAR"),
        (["--config-file", CONFIG, *CPU, "SOLVER.MAX_ITER", *out], "odd length"),
        (["--config-file", CONFIG, *CPU, "SOLVER.MAX_ITER", "abc", *out], "SOLVER.MAX_ITER"),
        (["--config-file", CONFIG, "--train-json", str(d / "missing.json"), "--train-images", str(d / "images"),
          *CPU, *out], "missing.json not found"),
        (["--config-file", CONFIG, "--train-json", str(d / "ok.json"), *CPU, *out], "--train-images"),
        (["--config-file", CONFIG, "--train-json", str(d / "nocats.json"), "--train-images", str(d / "images"),
          *CPU, *out], "no 'categories'"),
        (["--config-file", CONFIG, "--test-json", str(d / "broken.json"), "--test-images", str(d / "images"),
          *CPU, *out], "not valid JSON"),
        (["--config-file", CONFIG, *CPU, "--train-json", str(d / "ok.json")], "put the flags first"),
        (["--config-file", CONFIG, "--eval-only", *CPU, "MODEL.WEIGHTS", str(d / "nope.pth"), *out],
         "nope.pth was not found"),
        (["--config-file", CONFIG, *CPU, "MODEL.RESBACKBONES.WEIGHTS", str(d / "nope.safetensors"), *out],
         "weights file not found"),
        # audit of issue 16: these four were tracebacks (NotADirectoryError x2, yacs' AttributeError, detectron2's
        # AssertionError "Dataset 'resbackbones_train' is empty!")
        (["--config-file", CONFIG, *CPU, "OUTPUT_DIR", str(d / "ok.json")], "is a file; give a folder"),
        (["--config-file", CONFIG, *CPU, "OUTPUT_DIR", str(d / "ok.json" / "run")], "ok.json is a file, not a folder"),
        (["--config-file", str(d / "broken.json")], "not readable YAML"),
        (["--config-file", str(d / "scalar.yaml")], "not a mapping of detectron2 config keys (it holds scalar)"),
        (["--config-file", CONFIG, "--train-json", str(d / "ok.json"), "--train-images", str(d / "images"), *CPU,
          *out], "has no images: nothing to train on"),
    ]


def test_user_errors_are_one_line_exit_2_before_anything_runs(data, capsys):
    for argv, expected in _cases(data):
        assert train_d2.cli(argv) == 2, argv
        assert expected in _error(capsys), argv
    assert not (data / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_default_on_a_cpu_machine_names_the_fix(tmp_path, capsys):
    assert train_d2.cli(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out")]) == 2
    assert "add MODEL.DEVICE cpu" in _error(capsys)


def test_ctrl_c_exits_130(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_d2, "launch", interrupt)
    assert train_d2.cli(["--config-file", CONFIG, *CPU, "OUTPUT_DIR", str(tmp_path / "out")]) == 130
    assert "interrupted" in _error(capsys)


def test_as_a_command_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train_d2.py"), "--config-file", CONFIG, *CPU,
                             "SOLVER.MAX_ITER", "abc"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: config overrides") and "SOLVER.MAX_ITER" in result.stderr
