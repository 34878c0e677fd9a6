"""The suite stops at once, with one line, when the scratch disk is too full for it (a CI run once failed with ~200
ENOSPC errors instead)."""
import os
import subprocess
import sys

from conftest import REPO


def test_too_little_scratch_space_stops_the_session_with_one_line():
    env = dict(os.environ, RESBACKBONES_TEST_MIN_FREE_GB="1e9")  # more than any disk has
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_scratch_space.py::test_a_session_with_enough_space_runs"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "GB free under" in done.stdout + done.stderr and "passed" not in done.stdout


def test_a_session_with_enough_space_runs(tmp_path):
    assert tmp_path.is_dir()
