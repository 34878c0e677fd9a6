"""Bad configurations through both training tools: one stderr line naming the key / file / value, exit status 2,
no traceback. The same cases run against tools/train_cls.py and tools/train_det.py (tests/test_train_cls_errors.py
covers more train_cls-only flags; here the point is that both tools behave alike), on overrides and in files."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO

QUICKSTART = REPO / "configs" / "quickstart.yaml"
CLS_DEFAULT = REPO / "configs" / "cls" / "default.yaml"


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"reliability_cfg_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = {"train_cls": _tool("train_cls"), "train_det": _tool("train_det")}
BASE = {"train_cls": CLS_DEFAULT, "train_det": QUICKSTART}
# (override, words the line must contain): a key each tool has (solver.weight_decay / solver.momentum exist in
# both schemas), an unknown key with a near miss, wrong types, bad syntax.
OVERRIDE_CASES = [
    ("solver.wieght_decay=0.1", ["'solver.wieght_decay'", "'solver.weight_decay'"]),
    ("solver.momentum=fast", ["'solver.momentum'", "float", "'fast'"]),
    ("solver.momentum", ["bad override 'solver.momentum'", "key=value"]),
    ("solver.momentum=[0.9", ["bad override 'solver.momentum=[0.9'", "not valid YAML"]),
    ("solver=3", ["'solver'", "mapping"]),
    ("=0.1", ["'=0.1'"]),
]


def _run(capsys, tool, argv):
    code = TOOLS[tool].main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    return code, lines


def _one_line(code, lines):
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("override, words", OVERRIDE_CASES)
def test_bad_override(tool, override, words, tmp_path, capsys):
    line = _one_line(*_run(capsys, tool, ["--config", BASE[tool], "--output", tmp_path, override]))
    for word in words:
        assert word in line, line


FILE_CASES = [
    ("missing", None, ["config file not found", "missing.yaml"]),
    ("unknown_key", "solver:\n  wieght_decay: 0.1\n", ["unknown_key.yaml", "'solver.wieght_decay'"]),
    ("wrong_type", "solver:\n  momentum: [1, 2]\n", ["wrong_type.yaml", "'solver.momentum'"]),
    ("not_yaml", "solver: {momentum: 0.9\n", ["not_yaml.yaml"]),
    ("not_mapping", "- 1\n- 2\n", ["not_mapping.yaml"]),
    ("missing_base", "_base_: nowhere.yaml\n", ["nowhere.yaml"]),
]


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("name, text, words", FILE_CASES)
def test_bad_config_file(tool, name, text, words, tmp_path, capsys):
    path = tmp_path / f"{name}.yaml"
    if text is not None:
        path.write_text((f"_base_: {BASE[tool]}\n" if name not in ("missing_base", "not_mapping") else "") + text)
    line = _one_line(*_run(capsys, tool, ["--config", path, "--output", tmp_path / "out"]))
    for word in words:
        assert word in line, line


def test_train_det_process_exit_status_and_single_line(tmp_path):
    """The real command line (train_cls has the same test in test_train_cls_errors.py)."""
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train_det.py"), "--output", str(tmp_path),
                             "solver.base_lr=fast"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "'solver.base_lr'" in lines[0], result.stderr[-2000:]
