#!/usr/bin/env python3
"""Set-up and entry points that work on a fresh machine with only python3.

    python3 tools/dev.py quickstart   # create .venv, install, train + evaluate the quickstart detector into
                                      # output/quickstart (further arguments go to tools/train_det.py)
    python3 tools/dev.py test         # create .venv, install (with detectron2 when its archive is present), run tests

Standard library only: it runs before anything is installed.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("RESBACKBONES_VENV", ROOT / ".venv"))
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".resbackbones-installed"
D2_ARCHIVE = Path(os.environ.get("RESBACKBONES_D2_ARCHIVE", ROOT.parent / "shared/vendor/detectron2-02b5c4e2.tar.gz"))


def run(cmd, **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)


def install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.py", "tools/dev.py", "scripts/install_detectron2.sh"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_env(with_detectron2: bool) -> None:
    """Create .venv and install the package once; re-install only when the set-up files change."""
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = install_fingerprint()
    if not STAMP.exists() or STAMP.read_text() != fingerprint:
        run([PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]"])
        STAMP.write_text(fingerprint)
    if with_detectron2:
        script = ROOT / "scripts/install_detectron2.sh"
        if D2_ARCHIVE.exists() and script.exists():
            run(["bash", script, PYTHON, D2_ARCHIVE])
        elif os.environ.get("CI"):
            sys.exit(f"detectron2 archive {D2_ARCHIVE} is missing (required under CI)")
        else:
            print(f"note: {D2_ARCHIVE} not found; detectron2 tests will be skipped", flush=True)


def parallel_options(rest) -> list:
    """pytest-xdist options: one worker per core (at most 4), whole files per worker (--dist loadfile: a file's
    module fixtures, e.g. a trained model, are built once). Most of the suite's time is single-threaded Python
    (tool subprocesses, imports, data), which one process left idle on the second core. Given -n / -p in `rest`, or
    without xdist installed, nothing is added."""
    if any(arg == "-n" or arg.startswith(("-n", "--numprocesses", "-p")) for arg in rest):
        return []
    if subprocess.call([str(PYTHON), "-c", "import xdist"], stderr=subprocess.DEVNULL) != 0:
        return []
    workers = min(4, os.cpu_count() or 1)
    # --no-loadscope-reorder: keep the order tests/conftest.py gives (the longest files first)
    return ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder"] if workers > 1 else []


def main(argv) -> int:
    if not argv or argv[0] not in ("quickstart", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_env(with_detectron2=command in ("test", "setup"))
    if command == "setup":
        return 0
    if command == "test":
        return subprocess.call([str(PYTHON), "-m", "pytest", "-q", "tests", *parallel_options(rest), *rest], cwd=ROOT)
    # The output folder is the config's train.output_dir (output/quickstart); `--output DIR` in rest changes it.
    return subprocess.call([str(PYTHON), "tools/train_det.py", "--config", "configs/quickstart.yaml", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
