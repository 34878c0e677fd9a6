"""A trained detector back for inference: load_detector(checkpoint) -> eval-mode model, its config and class names.

    loaded = load_detector("output/quickstart/last.pt")     # config.yaml beside the checkpoint
    loaded.model([image])         # image float [3, H, W] RGB in [0, 1] -> [{"boxes": [K, 4], "labels": [K], ...}]
    loaded.names                  # {1: "circle", ...}: model label -> category name of its training data

The one loader of tools/predict.py, tools/eval_coco.py --checkpoint and tools/export_detector.py (also importable as
resbackbones.deploy.load_detector). Not to be confused with resbackbones/inference.py (optimize_for_inference: a
faster forward of an already built model).
"""
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..config import ConfigError, load_config, load_yaml_with_bases
from ..config.det import DetTrainConfig
from ..config.legacy import upgrade
from ..detection.builder import build_detector
from ..weights.checkpoint import CheckpointError, ModelCheckpoint, load_matching_state, read_model_checkpoint
from .coco_results import checkpoint_label_mapping

PathLike = Union[str, os.PathLike]
CONFIG_FILE = "config.yaml"  # what tools/train_det.py writes into its output folder


@dataclass
class LoadedDetector:
    """What load_detector returns. model: torchvision FasterRCNN / MaskRCNN of build_detector, eval mode."""

    model: nn.Module
    cfg: DetTrainConfig  # what the model was built from (model.backbone.weights cleared: the checkpoint has them)
    source: str  # where cfg came from (a file, or the checkpoint's own record); messages name it
    checkpoint: Path
    label_to_category: Dict[int, int] = field(default_factory=dict)  # label -> category id of the training data
    names: Dict[int, str] = field(default_factory=dict)  # label (1..num_classes) -> name (the id as text if unnamed)
    categories: List[Dict[str, Any]] = field(default_factory=list)  # [{"id", "name"}] of the training data

    def names_list(self) -> List[str]:
        """names as a list indexed by label, "__background__" at 0 (TorchScript-friendly)."""
        count = self.cfg.model.num_classes + 1
        return ["__background__"] + [self.names.get(label, str(label)) for label in range(1, count)]

    def label_mapping(self, categories: Sequence[Mapping[str, Any]]) -> Tuple[Dict[int, int], Optional[str]]:
        """{label: category id of `categories`} for scoring on data with those COCO categories, and a note when
        ids were matched by name (evaluation.coco_results.checkpoint_label_mapping; ValueError for other classes)."""
        record = {"label_to_category": self.label_to_category, "categories": self.categories}
        return checkpoint_label_mapping(record, categories, where=f"checkpoint {self.checkpoint}")


def _config_beside(checkpoint: Path) -> Optional[Path]:
    # OUTPUT/last.pt (train_det today) and OUTPUT/checkpoints/last.pt both resolve to OUTPUT/config.yaml. Only a
    # folder named "checkpoints" is looked past: a config.yaml above a run folder belongs to something else.
    candidates = [checkpoint.parent / CONFIG_FILE]
    if checkpoint.parent.name == "checkpoints":
        candidates.append(checkpoint.parent.parent / CONFIG_FILE)
    return next((path for path in candidates if path.is_file()), None)


def _refuse_classifier(record: ModelCheckpoint) -> None:
    if record.task == "cls":
        raise CheckpointError(f"{record.path} is a classification checkpoint (tools/train_cls.py), not a detector's")


def find_detector_config(checkpoint: PathLike, config: Optional[PathLike] = None, *, overrides: Sequence[str] = (),
                         record: Optional[ModelCheckpoint] = None) -> Tuple[DetTrainConfig, str]:
    """The config a detector checkpoint is rebuilt from, and where it came from: `config`; else the config the
    checkpoint records (record: the checkpoint already read; else it is read when the file exists); else
    config.yaml beside the checkpoint (or beside its checkpoints/ folder). `overrides` ("key=value") apply to it.
    Raises ConfigError in one line when there is none, CheckpointError for a classification checkpoint."""
    checkpoint = Path(checkpoint)
    if config:
        return load_config(DetTrainConfig, config, overrides), str(config)
    if record is None and checkpoint.is_file():
        record = read_model_checkpoint(checkpoint)
    if record is not None:
        _refuse_classifier(record)
    if record is not None and record.config is not None:
        source = f"the config recorded in {checkpoint}"
        return load_config(DetTrainConfig, None, overrides, base=upgrade(record.config, "det")[0],
                           base_source=source), source
    beside = _config_beside(checkpoint)
    if beside is None:
        raise ConfigError(f"{checkpoint} has no {CONFIG_FILE} beside it: give --config, the config it was trained "
                          f"with")
    # Written by train_det, maybe before the shared config vocabulary: read as stored output (config/legacy.py).
    stored = upgrade(load_yaml_with_bases(beside), "det")[0]
    return load_config(DetTrainConfig, None, overrides, base=stored, base_source=str(beside)), str(beside)


def load_detector(checkpoint: PathLike, config: Union[PathLike, DetTrainConfig, None] = None, *,
                  overrides: Sequence[str] = (), device="cpu", config_source: Optional[str] = None) -> LoadedDetector:
    """Rebuild the detector of a tools/train_det.py checkpoint (or of a bare state dict of one) and load every
    weight into it, strictly: the backbone weights the config names are not read.

    config: a file, a DetTrainConfig already loaded (config_source: how messages name it), or None: the lookup of
    find_detector_config. overrides: "key=value" applied to a config read here. device: where the model goes.
    Raises ConfigError / CheckpointError in one line; a mismatch names the checkpoint and the config.
    """
    checkpoint, record = Path(checkpoint), None
    if isinstance(config, DetTrainConfig):
        cfg, source = copy.deepcopy(config), config_source or "the given config"
    else:
        if not config and checkpoint.is_file():  # its own record comes before a config.yaml beside it
            record = read_model_checkpoint(checkpoint)
        cfg, source = find_detector_config(checkpoint, config, overrides=overrides, record=record)
    record = record or read_model_checkpoint(checkpoint)
    _refuse_classifier(record)
    cfg.model.backbone.weights = ""  # the checkpoint holds every weight
    model = build_detector(cfg.model)
    load_matching_state(model, record.state, checkpoint=checkpoint, model_source=source)
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in record.categories}
    names = {label: by_id.get(cat, str(cat)) for label, cat in record.label_to_category.items()}
    return LoadedDetector(model.to(device).eval(), cfg, source, checkpoint, dict(record.label_to_category), names,
                          list(record.categories))
