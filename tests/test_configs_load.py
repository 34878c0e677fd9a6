"""Every YAML config of the repo loads with its schema; the COCO configs' missing-data error says what to pass,
and what it says works (BCCD in ../shared/data/bccd)."""
from pathlib import Path

import pytest

from conftest import require_shared
from resbackbones.config import load_config, load_yaml_with_bases
from resbackbones.config.cls import ClsConfig
from resbackbones.config.det import DetTrainConfig
from resbackbones.data.det_datasets import check_data_paths
from resbackbones.data.errors import DataError

REPO = Path(__file__).resolve().parents[1]

import train_det  # noqa: E402

# configs/detectron2 holds detectron2's own yacs configs (tested in test_detectron2_builders.py).
YAMLS = sorted(p for p in list((REPO / "configs").rglob("*.yaml")) + list((REPO / "projects").rglob("configs/**/*.yaml"))
               if "detectron2" not in p.parts)


def is_classification(data: dict) -> bool:
    """A tools/train_cls.py config: its data section names the image folder and the recipe (detection's names
    data.train / data.val)."""
    return any(key in (data.get("data") or {}) for key in ("root", "recipe", "crop_size"))


def test_the_config_list_is_not_empty():
    assert len(YAMLS) > 30 and REPO / "configs" / "frcnn_r101.yaml" in YAMLS


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_loads_with_its_schema(path):
    is_cls = is_classification(load_yaml_with_bases(path))
    cfg = load_config(ClsConfig if is_cls else DetTrainConfig, path)
    if not is_cls and cfg.model.backbone.norm == "FrozenBN":
        assert cfg.model.backbone.weights, f"{path}: FrozenBN needs weights (training would be refused)"


def test_readme_detection_command_without_coco_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a checkout without datasets/coco
    code = train_det.main(["--config", str(REPO / "configs" / "frcnn_r101.yaml"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    for key in ("data.train.ann_file=datasets/coco/annotations/instances_train2017.json",
                "data.val.ann_file=datasets/coco/annotations/instances_val2017.json",
                "projects/coco_detection/README.md", "configs/bccd_frcnn_r50.yaml"):
        assert key in err
    # The overrides the message shows, applied to the same config from the repository root, find real data.
    require_shared("data/bccd")
    overrides = err.split("e.g. ", 1)[1].split(" (or ", 1)[0].split()
    monkeypatch.chdir(REPO)
    cfg = load_config(DetTrainConfig, REPO / "configs" / "frcnn_r101.yaml", overrides)
    check_data_paths({"train": cfg.data.train, "val": cfg.data.val})
    assert cfg.model.num_classes == 3 and not cfg.data.train.with_masks


def test_bccd_config_points_at_data_that_exists(monkeypatch):
    require_shared("data/bccd")
    monkeypatch.chdir(REPO)
    cfg = load_config(DetTrainConfig, REPO / "configs" / "bccd_frcnn_r50.yaml")
    check_data_paths({"train": cfg.data.train, "val": cfg.data.val})
    monkeypatch.chdir("/")
    with pytest.raises(DataError, match=r"data not found: data.train.ann_file=../shared/data/bccd/train.json"):
        check_data_paths({"train": cfg.data.train, "val": cfg.data.val})
