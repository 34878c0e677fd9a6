"""The contract every fuzz case is held to, and the counters the session prints (issue 21, item 5).

A tool or library entry point given any input either succeeds with correct output, or fails with exit 2/3 and
exactly one stderr line "error: ..." naming the file or key. Never a traceback, never a changed input, never exit 0
with a missing output. The fuzz tests are seeded (RESBACKBONES_FUZZ_SEED, default below) and bounded
(RESBACKBONES_FUZZ_EXAMPLES per property), so CI runs the same cases every time; the session prints both.
"""
import contextlib
import hashlib
import io
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, List, Sequence, Tuple

from hypothesis import HealthCheck, settings

FUZZ_SEED = int(os.environ.get("RESBACKBONES_FUZZ_SEED", "20261207"))
FUZZ_EXAMPLES = int(os.environ.get("RESBACKBONES_FUZZ_EXAMPLES", "80"))
CASES: Counter = Counter()  # property name -> cases run; printed by conftest's terminal summary

FUZZ_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(HealthCheck), print_blob=True)


def sha256_of(paths: Iterable[Path]) -> dict:
    """{path: sha256 of its bytes} for the paths that exist (inputs must keep theirs)."""
    return {Path(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def call_tool(main: Callable[[List[str]], int], argv: Sequence[str]) -> Tuple[int, str, str]:
    """Run a tool's main(argv) in-process; returns (exit code, stdout, stderr). SystemExit (argparse) counts."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_failure_line(stderr: str, names: Sequence[str], context: str = "") -> str:
    """Exactly one stderr line, "error: ...", naming at least one of `names` (file names, keys); returns it."""
    assert "Traceback" not in stderr, f"{context}: traceback\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{context}: expected one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), f"{context}: {lines[0]!r}"
    assert any(str(name) in lines[0] for name in names), f"{context}: {lines[0]!r} names none of {list(names)}"
    return lines[0]


def one_error_line(proc) -> str:
    """The contract for a tool run in a subprocess on a bad input: exit 2, one stderr line "error: ...", no traceback;
    returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def assert_contract(code: int, stderr: str, *, names: Sequence[str], outputs: Sequence[Path] = (),
                    inputs_before: dict = None, context: str = "") -> None:
    """The tool contract: exit 0 with every output present, or exit 2/3 with one line naming one of `names`; in
    both cases the inputs' bytes unchanged (inputs_before: sha256_of(inputs) taken before the call)."""
    if code == 0:
        assert "Traceback" not in stderr, f"{context}: traceback on success\n{stderr}"
        missing = [str(p) for p in outputs if not Path(p).is_file()]
        assert not missing, f"{context}: exit 0 but outputs missing: {missing}"
    else:
        assert code in (2, 3), f"{context}: exit {code}\n{stderr}"
        assert_failure_line(stderr, names, context)
    if inputs_before:
        after = sha256_of(inputs_before)
        changed = [str(p) for p, digest in inputs_before.items() if after.get(p) != digest]
        assert not changed, f"{context}: inputs changed or removed: {changed}"


def no_temp_files(folder: Path) -> List[str]:
    """Hidden temp files of atomic writes left in `folder` (must be none after any command)."""
    return sorted(p.name for p in Path(folder).rglob(".*.tmp-*"))
