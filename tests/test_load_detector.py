"""read_model_checkpoint (any checkpoint or a bare state dict -> the model's state + what the file records) and
load_detector's config lookup (issue 15, plan 2.1): --config, else the checkpoint's own record, else config.yaml
beside it or beside its checkpoints/ folder; a mismatch names the checkpoint and the config."""
import pytest
import torch

from conftest import REPO
from resbackbones.config import ConfigError, dump_yaml, load_config, to_dict
from resbackbones.config.det import DetTrainConfig
from resbackbones.detection.builder import build_detector
from resbackbones.engine.checkpoint import CheckpointError, load_checkpoint
from resbackbones.evaluation.inference import load_detector
from resbackbones.weights.checkpoint import read_model_checkpoint

SMALL = ["model.input.min_size=[64]", "model.input.max_size=96"]
LABELS = {"label_to_category": {1: 11, 2: 12, 3: 13},
          "categories": [{"id": 11, "name": "square"}, {"id": 12, "name": "circle"}, {"id": 13, "name": "triangle"}]}
# A tools/train_cls.py checkpoint's config as written today (its keys, not the detector's).
CLS_CONFIG = {"model": {"backbone": {"name": "resnet18", "options": {}}},
              "data": {"mean": [0.5] * 3, "std": [0.25] * 3}}


@pytest.fixture(scope="module")
def detector():
    cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml", SMALL)
    torch.manual_seed(0)
    return cfg, build_detector(cfg.model).state_dict()


def test_read_model_checkpoint_of_each_kind(tmp_path):
    state = {"w": torch.ones(2)}
    torch.save({"model": state, "iteration": 3, **LABELS}, tmp_path / "det.pt")
    det = read_model_checkpoint(tmp_path / "det.pt")
    assert det.task == "det" and det.is_training_checkpoint and torch.equal(det.state["w"], state["w"])
    assert det.label_to_category == {1: 11, 2: 12, 3: 13} and det.categories[1]["name"] == "circle"
    assert det.config is None and det.metadata is None and det.raw["iteration"] == 3

    torch.save({"model": state, "config": CLS_CONFIG, "num_classes": 10}, tmp_path / "cls.pt")
    cls = read_model_checkpoint(tmp_path / "cls.pt")
    assert cls.task == "cls" and cls.metadata.arch == "resnet18" and cls.metadata.num_classes == 10
    assert cls.config["data"]["mean"] == [0.5] * 3

    torch.save(state, tmp_path / "bare.pt")
    bare = read_model_checkpoint(tmp_path / "bare.pt")
    assert bare.task is None and not bare.is_training_checkpoint and list(bare.state) == ["w"]
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")  # a resume needs more than weights

    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a training checkpoint"):
        read_model_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_model_checkpoint(tmp_path / "missing.pt")


def test_load_detector_finds_its_config(detector, tmp_path):
    cfg, state = detector
    legacy = tmp_path / "legacy"  # train_det today: OUTPUT/last.pt beside OUTPUT/config.yaml
    legacy.mkdir()
    dump_yaml(cfg, legacy / "config.yaml")
    torch.save({"model": state, **LABELS}, legacy / "last.pt")
    loaded = load_detector(legacy / "last.pt")
    assert loaded.source == str(legacy / "config.yaml") and not loaded.model.training
    assert loaded.names == {1: "square", 2: "circle", 3: "triangle"} and loaded.cfg.model.backbone.weights == ""
    assert loaded.names_list() == ["__background__", "square", "circle", "triangle"]
    assert loaded.label_mapping([{"id": 13, "name": "triangle"}, {"id": 12, "name": "circle"},
                                 {"id": 11, "name": "square"}]) == ({1: 11, 2: 12, 3: 13}, None)

    (legacy / "checkpoints").mkdir()  # the planned layout: OUTPUT/checkpoints/last.pt
    (legacy / "last.pt").rename(legacy / "checkpoints" / "last.pt")
    assert load_detector(legacy / "checkpoints" / "last.pt").source == str(legacy / "config.yaml")

    recorded = tmp_path / "recorded.pt"  # a checkpoint that records its config needs no file beside it
    torch.save({"model": state, "config": to_dict(cfg)}, recorded)
    assert load_detector(recorded).source == f"the config recorded in {recorded}"

    bare = tmp_path / "elsewhere" / "bare.pt"  # a bare state dict with an explicit config
    bare.parent.mkdir()
    torch.save(state, bare)
    loaded = load_detector(bare, legacy / "config.yaml")
    assert loaded.names == {} and loaded.names_list()[1:] == ["1", "2", "3"]


def test_load_detector_refusals_name_the_files(detector, tmp_path):
    cfg, state = detector
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    dump_yaml(cfg, tmp_path / "config.yaml")  # above the run folder: not this checkpoint's
    torch.save({"model": state}, run / "sub" / "last.pt")
    with pytest.raises(ConfigError, match="has no config.yaml beside it: give --config"):
        load_detector(run / "sub" / "last.pt")
    with pytest.raises(CheckpointError) as error:
        load_detector(run / "sub" / "last.pt", tmp_path / "config.yaml", overrides=["model.num_classes=5"])
    message = str(error.value)
    assert f"checkpoint {run / 'sub' / 'last.pt'} does not match the model of {tmp_path / 'config.yaml'}" in message
    assert "of another shape" in message and len(message.splitlines()) == 1
    torch.save({"model": state, "config": CLS_CONFIG}, run / "cls.pt")
    with pytest.raises(CheckpointError, match="cls.pt is a classification checkpoint"):
        load_detector(run / "cls.pt")
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        load_detector(run / "cls.pt", tmp_path / "config.yaml")
