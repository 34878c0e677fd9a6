"""The configs of the repository keep their meaning: tests/fixtures/config_dumps/ holds `to_dict` of every YAML that
tests/test_configs_load.py loads and of every committed run config.yaml (docs/results/, projects/*/results/), as
loaded before the config vocabulary changed (issue 15 step 7). Each file must still load to the same dict.

    python tests/test_config_equivalence.py    # writes the dumps of files that have none yet
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resbackbones.config import load_config, load_yaml_with_bases, to_dict
from resbackbones.config.cls import ClsConfig
from resbackbones.config.det import DetTrainConfig

REPO = Path(__file__).resolve().parents[1]
DUMPS = Path(__file__).resolve().parent / "fixtures" / "config_dumps"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_configs_load import YAMLS  # noqa: E402


def committed_run_configs():
    """config.yaml files that runs wrote and that are committed (projects/*/runs/ is git-ignored: live runs)."""
    listed = subprocess.run(["git", "ls-files", "docs/results", "projects"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    return sorted(REPO / p for p in listed if p.endswith("/config.yaml")
                  and (p.startswith("docs/results/") or p.split("/")[2:3] == ["results"]))


FILES = YAMLS + committed_run_configs()


def dump_path(path: Path) -> Path:
    return DUMPS / path.relative_to(REPO).with_suffix(".json")


def loaded(path: Path) -> dict:
    is_cls = "arch" in (load_yaml_with_bases(path).get("model") or {})
    return to_dict(load_config(ClsConfig if is_cls else DetTrainConfig, path))


def test_every_file_has_a_dump_and_every_dump_a_file():
    assert len(committed_run_configs()) >= 18
    missing = [str(p.relative_to(REPO)) for p in FILES if not dump_path(p).is_file()]
    assert not missing, f"no dump for {missing}: run python tests/test_config_equivalence.py"
    stale = {dump_path(p) for p in FILES} ^ set(DUMPS.rglob("*.json"))
    assert not stale, f"dumps without a config file: {sorted(map(str, stale))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_file_loads_to_its_dump(path):
    assert loaded(path) == json.loads(dump_path(path).read_text(encoding="utf-8"))


if __name__ == "__main__":
    for file in FILES:
        target = dump_path(file)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            sections = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in loaded(file).items())
            target.write_text("{\n" + sections + "\n}\n", encoding="utf-8")
            print(target.relative_to(REPO))
