"""Shared test fixtures. Data in ../shared is optional on a laptop but required under CI (CI=true)."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESBACKBONES_SHARED", REPO.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Every tool imports its sibling tools/_cli.py (`from _cli import ...`), found as `python tools/X.py` finds it: the
# script's folder is on sys.path. A test that loads a tool by file path needs the same folder there.
sys.path.append(str(REPO / "tools"))

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Nothing downloads during tests: "torchvision:<ENUM>" weights resolve only from files a test places in its own
# TORCH_HOME (subprocesses inherit this).
os.environ["RESBACKBONES_OFFLINE"] = "1"


def tiny_train_det_args(shapes_root: Path, out: Path, *extra: str) -> list:
    """tools/train_det.py arguments for a tiny quickstart run (Mask R-CNN, 6 synthetic train / 3 val images under
    shapes_root, batch 2, logged every iteration, no flips) writing to `out`; `extra` appends flags / overrides."""
    return ["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(out), "--device", "cpu",
            "data.train.num_images=6", f"data.train.root={shapes_root / 'train'}", "data.val.num_images=3",
            f"data.val.root={shapes_root / 'val'}", "solver.batch_size=2", "train.log_period=1",
            "train.progress=false", "data.flip_prob=0.0", *extra]


def random_detector_run(folder: Path, overrides=()) -> Path:
    """`folder` made a train_det-like run folder: config.yaml (configs/quickstart.yaml + overrides) and last.pt, a
    randomly initialised detector (seed 0: scores ~ 1 / classes) with categories a, b, c (ids 1-3). Returns it."""
    from resbackbones.config import dump_yaml, load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector

    cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml", list(overrides))
    dump_yaml(cfg, folder / "config.yaml")
    torch.manual_seed(0)
    torch.save({"model": build_detector(cfg.model).state_dict(), "label_to_category": {1: 1, 2: 2, 3: 3},
                "categories": [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]}, folder / "last.pt")
    return folder


def require_shared(relative: str) -> Path:
    """Path to ../shared/<relative>; skip when absent, but fail under CI where it must exist."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared data {path} is absent"
        if ON_CI:
            pytest.fail(message + " (CI=true: required)")
        pytest.skip(message)
    return path


def load_project_module(project: str, name: str):
    """projects/<project>/<name>.py as a module named "<project>_<name>": several projects have a summarize.py, and a
    plain `import summarize` after sys.path edits would hand every test file the first one imported."""
    import importlib.util
    import sys

    path = REPO / "projects" / project / f"{name}.py"
    module_name = f"{project}_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def require_detectron2() -> None:
    """Skip the calling test module when detectron2 is not installed; under CI (CI=true) fail instead, since CI
    installs it (scripts/install_detectron2.sh) and a silent skip would hide a broken install."""
    try:
        import detectron2  # noqa: F401
    except ImportError as error:
        if ON_CI:
            pytest.fail(f"detectron2 is not installed ({error}); CI must run scripts/install_detectron2.sh first")
        pytest.skip("detectron2 is not installed (scripts/install_detectron2.sh installs it)",
                    allow_module_level=True)


@pytest.fixture
def shared_path():
    return require_shared


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The largest tests (detector checkpoints, the transfer project's tiny run, the documented-command checkout) need
# about this much scratch space at once; fail the session with one line instead of hundreds of ENOSPC errors.
MIN_FREE_SCRATCH_GB = float(os.environ.get("RESBACKBONES_TEST_MIN_FREE_GB", "4"))


def pytest_sessionstart(session):
    import shutil
    import tempfile

    scratch = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    free_gb = shutil.disk_usage(scratch).free / 2**30
    if free_gb < MIN_FREE_SCRATCH_GB:
        pytest.exit(f"only {free_gb:.1f} GB free under {scratch}; the tests need about {MIN_FREE_SCRATCH_GB:.0f} GB "
                    f"of scratch space (old /tmp/pytest-of-* folders can be removed)", returncode=3)
