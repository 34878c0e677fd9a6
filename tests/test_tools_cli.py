"""tools/_cli.py, the parser / setup / exit codes every tool shares (issue 15, step 14): every tool answers --help,
and one positional key=value override syntax reaches the config in train_cls, train_det, eval_coco and predict."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, random_detector_run

# tools/dev.py is the stdlib bootstrap (no argparse; it prints its usage and exits 2 without a command).
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py") if not p.stem.startswith("_") and p.stem != "dev")
IMAGES = FIXTURES / "coco_sample" / "images"
GT = FIXTURES / "coco_sample" / "annotations.json"
SMALL = ["model.input.min_size=[96]", "model.input.max_size=128", "model.rpn.pre_nms_top_n_test=50",
         "model.rpn.post_nms_top_n_test=20", "model.roi_heads.score_thresh=0.0"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_cli_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_answers_help(name):
    if name == "train_d2":
        pytest.importorskip("detectron2")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("name", ["predict", "eval_coco"])
def test_amp_choices_are_the_engines(name):
    from resbackbones.utils.amp import AMP_MODES

    tool = _tool(name)
    common = ["--checkpoint", "c.pt", "--gt", "g.json", "--images", "i"]
    assert [tool.parse_args(common + ["--amp", mode]).amp for mode in AMP_MODES] == list(AMP_MODES)
    with pytest.raises(SystemExit):
        tool.parse_args(common + ["--amp", "fp8"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A train_det-like run folder: a randomly initialised small quickstart Mask R-CNN and its config.yaml."""
    return random_detector_run(tmp_path_factory.mktemp("run"), SMALL)


def _three_category_gt(path: Path) -> Path:
    """The coco_sample json relabelled into the run's three categories a, b, c, so the checkpoint can score it."""
    gt = json.loads(GT.read_text())
    gt["categories"] = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    for ann in gt["annotations"]:
        ann["category_id"] = ann["category_id"] % 3 + 1
    path.write_text(json.dumps(gt))
    return path


def _commands(run, tmp_path):
    """Each tool's command line, to which an override is appended (tools run in-process: main(argv))."""
    return {
        "train_cls": ["--output", tmp_path / "cls", "--device", "cpu"],
        "train_det": ["--output", tmp_path / "det", "--device", "cpu"],
        "eval_coco": ["--checkpoint", run / "last.pt", "--gt", _three_category_gt(tmp_path / "gt.json"), "--images",
                      IMAGES, "--device", "cpu", "--amp", "none", "--out", tmp_path / "stats.json"],
        "predict": ["--checkpoint", run / "last.pt", "--images", IMAGES, "--output", tmp_path / "png", "--device",
                    "cpu", "--amp", "none", "--score-thresh", "0"],
    }


@pytest.mark.parametrize("name", ["train_cls", "train_det", "eval_coco", "predict"])
def test_one_override_syntax_reaches_every_config(name, run, tmp_path, capsys):
    # An invalid value of a key both training schemas share: refused by the config loader, so the override reached
    # the config, in one line, before anything is written.
    code = _tool(name).main([str(a) for a in _commands(run, tmp_path)[name] + ["solver.base_lr=-1"]])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "solver.base_lr" in err, err
    assert not any((tmp_path / sub).exists() for sub in ("cls", "det", "png", "stats.json", "stats.detections.json"))


@pytest.mark.parametrize("name", ["eval_coco", "predict"])
def test_a_valid_override_changes_the_detector(name, run, tmp_path, capsys):
    code = _tool(name).main([str(a) for a in _commands(run, tmp_path)[name] + ["model.roi_heads.detections_per_img=1"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    if name == "predict":
        counts = [int(line.rsplit(": ", 1)[1].split()[0]) for line in out.splitlines() if " -> " in line]
        assert len(counts) == 6 and max(counts) <= 1, out
    else:
        detected = next(line for line in out.splitlines() if line.startswith("detected "))
        assert int(detected.split()[1]) <= 6, detected  # one per image at most


@pytest.mark.parametrize("name", ["train_cls", "train_det"])
def test_trainer_flags_and_overrides_build_one_config(name, tmp_path):
    tool = _tool(name)
    args = tool.parse_args(["--output", str(tmp_path / "o"), "solver.base_lr=0.05", "--device", "cpu"])
    cfg = tool.build_config(args)
    assert cfg.solver.base_lr == 0.05 and cfg.train.device == "cpu" and cfg.train.output_dir == str(tmp_path / "o")


def test_eval_coco_refuses_opts_naming_the_new_syntax(run, tmp_path, capsys):
    code = _tool("eval_coco").main(["--checkpoint", str(run / "last.pt"), "--gt", str(GT), "--images", str(IMAGES),
                                    "--opts", "model.roi_heads.detections_per_img=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--opts" in err and "key=value" in err and "model.roi_heads.detections_per_img=1" in err, err
