"""The configs of the repository kept their meaning through the shared config vocabulary (issue 15 step 7):
tests/fixtures/config_dumps/ holds `to_dict` of every YAML that tests/test_configs_load.py loads and of every
committed run config.yaml (docs/results/, projects/*/results/) as loaded before the rename. Upgraded by
config/legacy.py, each dump must equal what the file loads to today: the repository YAMLs in the new keys, the
committed run configs (old keys, read-only records) through the same upgrade.

    python tests/test_config_equivalence.py    # writes the dumps of files that have none yet (today's keys)
"""
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from resbackbones.config import from_dict, load_config, load_yaml_with_bases, to_dict
from resbackbones.config.cls import ClsConfig
from resbackbones.config.det import DetTrainConfig
from resbackbones.config.legacy import upgrade

REPO = Path(__file__).resolve().parents[1]
DUMPS = Path(__file__).resolve().parent / "fixtures" / "config_dumps"

from test_configs_load import YAMLS, is_classification  # noqa: E402


def committed_run_configs():
    """config.yaml files that runs wrote and that are committed (projects/*/runs/ is git-ignored: live runs)."""
    listed = subprocess.run(["git", "ls-files", "docs/results", "projects"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    return sorted(REPO / p for p in listed if p.endswith("/config.yaml")
                  and (p.startswith("docs/results/") or p.split("/")[2:3] == ["results"]))


RUN_CONFIGS = committed_run_configs()
FILES = YAMLS + RUN_CONFIGS


def dump_path(path: Path) -> Path:
    return DUMPS / path.relative_to(REPO).with_suffix(".json")


def task_of(data: dict) -> str:
    return "cls" if is_classification(data) else "det"


def upgraded(data: dict, task: str) -> dict:
    """A stored config in today's keys, defaults filled in: what a run folder's config reads as today."""
    return to_dict(from_dict(ClsConfig if task == "cls" else DetTrainConfig, upgrade(data, task)[0]))


def loaded(path: Path) -> dict:
    data = load_yaml_with_bases(path)
    task = task_of(data)
    if path in RUN_CONFIGS:  # written by an earlier version: read as stored output is read
        return upgraded(yaml.safe_load(path.read_text(encoding="utf-8")), task)
    return to_dict(load_config(ClsConfig if task == "cls" else DetTrainConfig, path))


def test_every_file_has_a_dump_and_every_dump_a_file():
    assert len(RUN_CONFIGS) >= 18
    missing = [str(p.relative_to(REPO)) for p in FILES if not dump_path(p).is_file()]
    assert not missing, f"no dump for {missing}: run python tests/test_config_equivalence.py"
    stale = {dump_path(p) for p in FILES} ^ set(DUMPS.rglob("*.json"))
    assert not stale, f"dumps without a config file: {sorted(map(str, stale))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_file_loads_to_its_upgraded_dump(path):
    dump = json.loads(dump_path(path).read_text(encoding="utf-8"))
    task = task_of(load_yaml_with_bases(path))
    assert task == ("cls" if "ema" in dump else "det")
    assert loaded(path) == upgraded(dump, task)


@pytest.mark.parametrize("task", ["cls", "det"])
def test_upgrade_leaves_todays_keys_alone(task):
    today = to_dict(ClsConfig() if task == "cls" else DetTrainConfig())
    assert upgrade(today, task) == (today, [])


def test_upgrade_notes_each_change_and_converts_values():
    old = {"model": {"arch": "resnet50", "weights": None, "options": {"norm": "BN"}},
           "data": {"hflip": False, "workers": 3}, "solver": {"lr": 0.05, "label_smoothing": 0.1,
                                                              "clip_grad_norm": None},
           "train": {"threads": 1, "print_freq": 50}}
    new, notes = upgrade(old, "cls")
    assert new == {"model": {"backbone": {"name": "resnet50", "weights": "", "options": {"norm": "BN"}}},
                   "data": {"flip_prob": 0.0, "num_workers": 3}, "solver": {"base_lr": 0.05, "clip_grad_norm": 0.0},
                   "loss": {"label_smoothing": 0.1}, "train": {"num_threads": 1, "log_period": 50}}
    assert isinstance(new["data"]["flip_prob"], float) and "solver.lr -> solver.base_lr" in notes
    assert old["solver"] == {"lr": 0.05, "label_smoothing": 0.1, "clip_grad_norm": None}  # input untouched
    assert len(notes) == 10


if __name__ == "__main__":
    for file in FILES:
        target = dump_path(file)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            sections = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in loaded(file).items())
            target.write_text("{\n" + sections + "\n}\n", encoding="utf-8")
            print(target.relative_to(REPO))
