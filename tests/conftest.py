"""Shared test fixtures. Data in ../shared is optional on a laptop but required under CI (CI=true)."""
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESBACKBONES_SHARED", REPO.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# tools/ and benchmarks/ are on the import path through pytest.ini's pythonpath (tools import their sibling
# tools/_cli.py as `python tools/X.py` finds it).

# Under pytest-xdist (tools/dev.py test runs one worker per core), one torch thread per worker: two workers with two
# threads each on two cores would fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
# Nothing downloads during tests: "torchvision:<ENUM>" weights resolve only from files a test places in its own
# TORCH_HOME (subprocesses inherit this).
os.environ["RESBACKBONES_OFFLINE"] = "1"


# Files of about a minute of CPU or more (the CI run of 2026-12-07 on a 2-core AMD EPYC), longest first, run before
# the rest: under pytest-xdist --dist loadfile a file starts only when a worker is free, so a long file started last
# decides alone when the run ends (longest-first scheduling keeps that tail short). tools/dev.py passes
# --no-loadscope-reorder, without which xdist sorts the files by their number of tests, which puts these last.
SLOW_FILES_FIRST = (
    "test_cifar_checkpoints.py", "test_deploy_configs_r101.py", "test_projects_transfer.py", "test_detector_bf16.py",
    "test_deploy_configs_c4_vgg.py", "test_deploy_tools.py", "test_detector_torchvision.py",
    "test_projects_vgg_vs_resnet.py", "test_projects_degradation.py", "test_deploy_formats.py",
    "test_train_cls_learns.py", "test_reliability_ddp_soak.py", "test_reliability_checkpoint_kill.py",
    "test_train_det_ddp.py", "test_train_cls_resume.py", "test_bf16_guard.py", "test_deploy_int8.py",
    "test_resume_truth.py", "test_train_cls_ddp.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


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


# Tests are hermetic: they never touch the checkout's default folders. The session compares these before and after
# (the quickstart fills output/ on a developer's checkout; a test using the default --output used to fail there).
_CHECKOUT_SKIP = {".pytest_cache", ".venv", ".git", "__pycache__", ".hypothesis"}


def _checkout_snapshot() -> dict:
    """The checkout's top-level names (a default file such as stats.json appearing there), and {path: (size,
    mtime_ns)} for everything under output/ (the tools' default folder)."""
    snapshot = {}
    for entry in REPO.iterdir():
        if entry.name not in _CHECKOUT_SKIP and not entry.name.endswith(".egg-info"):
            snapshot[entry.name] = "present"  # names only: developers edit tracked files while tests run
    output = REPO / "output"
    if output.is_dir():
        for path in output.rglob("*"):
            stat = path.lstat()
            snapshot[path.relative_to(REPO).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def pytest_sessionfinish(session, exitstatus):
    support = sys.modules.get("fuzz_support")
    if hasattr(session.config, "workeroutput") and support is not None:  # an xdist worker: hand the counts over
        session.config.workeroutput["rb_fuzz_cases"] = dict(support.CASES)
    before = getattr(session.config, "_rb_checkout_snapshot", None)
    if before is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    after = _checkout_snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        print(f"\nerror: the tests changed the checkout's default folders ({shown}); tests must write only under "
              f"tmp_path", flush=True)
        session.exitstatus = 1


def pytest_sessionstart(session):
    import shutil
    import tempfile

    session.config._rb_checkout_snapshot = _checkout_snapshot()

    scratch = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    free_gb = shutil.disk_usage(scratch).free / 2**30
    if free_gb < MIN_FREE_SCRATCH_GB:
        pytest.exit(f"only {free_gb:.1f} GB free under {scratch}; the tests need about {MIN_FREE_SCRATCH_GB:.0f} GB "
                    f"of scratch space (old /tmp/pytest-of-* folders can be removed)", returncode=3)


_WORKER_FUZZ_CASES: Counter = Counter()  # the xdist controller's sum of its workers' fuzz counts


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: a worker finished and sent its workeroutput
def pytest_testnodedown(node, error):
    _WORKER_FUZZ_CASES.update(getattr(node, "workeroutput", {}).get("rb_fuzz_cases", {}))


def pytest_terminal_summary(terminalreporter):
    """The fuzzer's case counts and seed (tests/fuzz_support.py), so a CI log says what was tried (with xdist: the
    sum over the workers)."""
    import fuzz_support as support

    cases = support.CASES + _WORKER_FUZZ_CASES
    if cases:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(cases.items()))
        terminalreporter.write_line(f"fuzz: {sum(cases.values())} cases ({counts}), seed {support.FUZZ_SEED}, "
                                    f"at most {support.FUZZ_EXAMPLES} per property (RESBACKBONES_FUZZ_SEED / "
                                    f"RESBACKBONES_FUZZ_EXAMPLES)")
