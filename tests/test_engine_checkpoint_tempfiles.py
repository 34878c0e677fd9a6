"""Temp files of killed checkpoint writers (".<name>.pt.tmp-<pid>") are removed by the next save into the folder,
but only when their writer is gone; a live writer's temp file and other files are left alone."""
import os
import subprocess
import sys
import time

from resbackbones.engine.checkpoint import load_checkpoint, remove_stale_temp_files, save_atomic
from resbackbones.io.outputs import clear_registries


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_save_removes_dead_writers_temp_files_only(tmp_path):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".last.pt.tmp-{dead}", tmp_path / f".epoch_3.pt.tmp-{dead}"]
        kept = [tmp_path / f".last.pt.tmp-{live.pid}",          # a writer still running
                tmp_path / f".metrics.csv.tmp-{dead}",          # not a checkpoint temp name
                tmp_path / ".last.pt.tmp-abc", tmp_path / "notes.txt"]
        for path in stale + kept:
            path.write_bytes(b"partial")
        save_atomic({"model": {}, "step": 1}, tmp_path / "last.pt")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt"] + [p.name for p in kept])
        assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    finally:
        live.kill()
        live.wait()
    # Once that writer is gone, the following save removes its file too. (It is another command: this one read
    # last.pt, and the output rule refuses to write over a file the same command read.)
    clear_registries()
    save_atomic({"model": {}, "step": 2}, tmp_path / "last.pt")
    assert not (tmp_path / f".last.pt.tmp-{live.pid}").exists()


def test_own_pid_is_stale_only_when_older_than_this_process(tmp_path):
    # A killed writer whose pid this process now has (container restarts): its file predates us.
    old = tmp_path / f".best.pt.tmp-{os.getpid()}"
    fresh = tmp_path / f".last.pt.tmp-{os.getpid()}"   # as if another thread of ours were writing it now
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert remove_stale_temp_files(tmp_path) == [old]
    assert fresh.exists()


def test_missing_folder_is_nothing_to_clean(tmp_path):
    assert remove_stale_temp_files(tmp_path / "absent") == []
