"""The docs site builds with warnings as errors, and every relative link of the docs points at a file that exists.

`mkdocs build --strict` over mkdocs.yml (the guides in docs/ and the API reference that mkdocstrings builds from
the docstrings) into tmp_path: a docstring that mkdocstrings cannot parse, a page missing from the nav's files or a
broken reference fails the test with mkdocs' own warning lines. mkdocs cannot see files outside docs/, so the links
of README.md and docs/ (files, and the headings they name) are checked here against the repository (mkdocs.yml
leaves those to this test).
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


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)  # links and headings in code blocks are neither


def anchors(page: Path) -> List[str]:
    """The heading anchors of a markdown page as GitHub and mkdocs' toc both spell the plain ones."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _without_code(page.read_text(encoding="utf-8")), flags=re.M)
    return [re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).strip().replace(" ", "-") for h in headings]


def _has_api(page: Path) -> bool:
    """mkdocstrings writes the anchors of an API page (one per object; mkdocs checks those)."""
    return bool(re.search(r"^::: ", page.read_text(encoding="utf-8"), flags=re.M))


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for match in LINK.finditer(_without_code(page.read_text(encoding="utf-8"))):
        target, _, anchor = (match.group(1) or match.group(2)).partition("#")
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path = page.parent / target if target else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path) and not _has_api(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.relative_to(REPO)} links to missing files or headings: {broken}"
