"""The docs site builds with warnings as errors, and every relative link of the docs points at a file that exists.

`mkdocs build --strict` over mkdocs.yml (the guides in docs/ and the API reference that mkdocstrings builds from
the docstrings) into tmp_path: a docstring that mkdocstrings cannot parse, a page missing from the nav's files or a
broken reference fails the test with mkdocs' own warning lines. mkdocs cannot see files outside docs/, so the links
of README.md and docs/ are checked here against the repository (mkdocs.yml leaves those to this test).
"""
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
SKIP_DIRS = ("docs/results/", "docs/dev/")  # run records and plans: not part of the site


def doc_pages() -> List[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if not str(p.relative_to(REPO)).startswith(SKIP_DIRS)]


def test_mkdocs_build_strict(tmp_path):
    try:
        import mkdocstrings  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as error:  # the dev extra includes docs: in CI this is a failure, not a skip
        pytest.fail(f"{error}: install the docs extra (pip install -e '.[docs]')")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.startswith(("WARNING", "ERROR")) or "Aborted" in line]
    assert done.returncode == 0 and not problems, (
        f"mkdocs build --strict failed (exit {done.returncode}):\n" + "\n".join(problems or [done.stderr[-3000:]]))
    for page in ("index.html", "api/resbackbones/index.html", "api/engine/index.html"):
        assert (site / page).is_file(), page
    # the API pages hold the docstrings, not only the headings
    assert "out_features" in (site / "api/resbackbones/index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # links in code are not links
    broken = []
    for match in LINK.finditer(text):
        target = (match.group(1) or match.group(2)).split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue  # an anchor on the same page, or a URL
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"
