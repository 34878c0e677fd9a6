"""One evaluation path (detectron2's DatasetEvaluator / inference_on_dataset) and a trained detector back for
inference (load_detector).

    metrics = inference_on_dataset(model, loader, ClassificationEvaluator(), device=device, amp="bf16")
    metrics = inference_on_dataset(detector, batches, COCOEvaluator(gt, label_to_category, iou_types=("bbox",)))

    loaded = load_detector("output/quickstart/checkpoints/last.pt")   # the config it records (or config.yaml)
    loaded.model([image])         # image float [3, H, W] RGB in [0, 1] -> [{"boxes": [K, 4], "labels": [K], ...}]
    loaded.names                  # {1: "circle", ...}: model label -> category name of its training data

Both trainers evaluate through inference_on_dataset (ClassificationEvaluator: evaluation/classification.py,
COCOEvaluator: evaluation/coco_evaluator.py), and so do tools/eval_coco.py --checkpoint and train_det --eval-only.
load_detector is the one loader of tools/predict.py, tools/eval_coco.py --checkpoint, train_det --eval-only and
tools/export_detector.py (also importable as resbackbones.deploy.load_detector). Not to be confused with
resbackbones/inference.py (optimize_for_inference: a faster forward of an already built model).
"""
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError, load_config, load_yaml_with_bases, to_dict
from ..config.det import DetTrainConfig
from ..config.legacy import upgrade
from ..detection.builder import build_detector
from ..io.outputs import register_input
from ..utils.amp import autocast
from ..weights.checkpoint import CheckpointError, TrainingCheckpoint, load_matching_state
from .coco_results import checkpoint_label_mapping

PathLike = Union[str, os.PathLike]


class DatasetEvaluator:
    """What inference_on_dataset asks of a task: reset() once, then per batch inputs() (what the model is called
    with) and process() (accumulate), then evaluate() (gather over ranks, compute the metrics)."""

    def reset(self) -> None:
        """Forget the batches of an earlier run."""

    def inputs(self, batch: Any, device: torch.device) -> Any:
        """The model's argument for `batch`, on `device`."""
        raise NotImplementedError

    def process(self, batch: Any, outputs: Any) -> None:
        """Accumulate the model's outputs (floating tensors already fp32) on `batch`."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        """The metrics over every batch of every rank (a collective under DDP: every rank calls it)."""
        raise NotImplementedError


def _to_fp32(outputs: Any) -> Any:
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Mapping):
        return {key: _to_fp32(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_fp32(value) for value in outputs)
    return outputs


def inference_on_dataset(model: nn.Module, loader: Iterable, evaluator: DatasetEvaluator, *,
                         device: Union[str, torch.device, None] = None, amp: str = "none",
                         channels_last: bool = False) -> Dict[str, Any]:
    """Run `model` over every batch of `loader` (this rank's share) in eval mode, without gradients, under
    autocast(amp) ("none", "bf16", "fp16"), outputs cast to fp32, and return evaluator.evaluate(). device None: the
    model's. channels_last: 4-d image batches [N, 3, H, W] go in channels-last memory format. The model's train /
    eval mode is restored afterwards."""
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    evaluator.reset()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                inputs = evaluator.inputs(batch, device)
                if channels_last and torch.is_tensor(inputs) and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast(device, amp):
                    outputs = model(inputs)
                evaluator.process(batch, _to_fp32(outputs))
    finally:
        model.train(was_training)
    return evaluator.evaluate()


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
    note: str = ""  # one line for the user when the given config's model section was not used (see load_detector)

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
    # OUTPUT/last.pt (train_det before checkpoints/) and OUTPUT/checkpoints/last.pt both resolve to
    # OUTPUT/config.yaml. Only a folder named "checkpoints" is looked past: a config.yaml above a run folder belongs
    # to something else.
    candidates = [checkpoint.parent / CONFIG_FILE]
    if checkpoint.parent.name == "checkpoints":
        candidates.append(checkpoint.parent.parent / CONFIG_FILE)
    return next((path for path in candidates if path.is_file()), None)


def detector_inputs(checkpoint: PathLike, config: Optional[PathLike] = None) -> Dict[str, Optional[Path]]:
    """The files load_detector(checkpoint, config) may read, by flag, for the tools' output checks before any work
    (io.outputs.refuse_inputs): the checkpoint, the config, and the config.yaml it would look for beside it."""
    checkpoint = Path(checkpoint)
    beside = [checkpoint.parent / CONFIG_FILE]
    if checkpoint.parent.name == "checkpoints":
        beside.append(checkpoint.parent.parent / CONFIG_FILE)
    found = {"--checkpoint": checkpoint, "--config": Path(config) if config else None}
    return dict(found, **{f"config {path}": path for path in beside if path.is_file()})


def _refuse_classifier(record: TrainingCheckpoint) -> None:
    if record.task == "cls":
        raise CheckpointError(f"{record.path} is a classification checkpoint (tools/train_cls.py), not a detector's")


def _flat(data: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _adopt_recorded_model(cfg: DetTrainConfig, record: Optional[TrainingCheckpoint], model_overrides: Sequence[str] = ()
                          ) -> Tuple[DetTrainConfig, str]:
    """cfg with the model section the checkpoint recorded (+ model_overrides, "model.x=value"), and a note naming the
    keys where cfg's own model section differed. A given config describes the data and the test settings; the model
    is the one that was trained: its input normalisation came from its backbone weights, which a config whose
    model.input is empty would silently replace by the ImageNet default."""
    if record is None or record.config is None:
        return cfg, ""
    recorded = load_config(DetTrainConfig, None, model_overrides, base=upgrade(record.config, "det")[0],
                           base_source=f"the config recorded in {record.path}").model
    given, adopted = _flat(to_dict(cfg.model), "model."), _flat(to_dict(recorded), "model.")
    # Empty values (model.input's normalisation left to the backbone weights) are filled in by training, not set.
    differ = [k for k in adopted if k != "model.backbone.weights" and given.get(k) not in (None, "", (), [])
              and given.get(k) != adopted[k]]
    cfg.model = recorded
    if not differ:
        return cfg, ""
    listed = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return cfg, (f"note: the model is rebuilt from the config recorded in {record.path}; not used from the given "
                 f"config: {listed}")


def _resolve_config(checkpoint: Path, config: Optional[PathLike], overrides: Sequence[str],
                    record: Optional[TrainingCheckpoint]) -> Tuple[DetTrainConfig, str, str]:
    """find_detector_config's lookup, plus the note of _adopt_recorded_model."""
    if record is None and checkpoint.is_file():
        record = TrainingCheckpoint.read(checkpoint)
    if record is not None:
        _refuse_classifier(record)
    if config:
        register_input(config)  # the output rule: no output of this command may replace the config it reads
        model_overrides = [o for o in overrides if o.strip().startswith("model.")]
        cfg, note = _adopt_recorded_model(load_config(DetTrainConfig, config, overrides), record, model_overrides)
        return cfg, str(config), note
    if record is not None and record.config is not None:
        source = f"the config recorded in {checkpoint}"
        return load_config(DetTrainConfig, None, overrides, base=upgrade(record.config, "det")[0],
                           base_source=source), source, ""
    beside = _config_beside(checkpoint)
    if beside is None:
        raise ConfigError(f"{checkpoint} has no {CONFIG_FILE} beside it: give --config, the config it was trained "
                          f"with")
    register_input(beside)
    # Written by train_det, maybe before the shared config vocabulary: read as stored output (config/legacy.py).
    stored = upgrade(load_yaml_with_bases(beside), "det")[0]
    return load_config(DetTrainConfig, None, overrides, base=stored, base_source=str(beside)), str(beside), ""


def find_detector_config(checkpoint: PathLike, config: Optional[PathLike] = None, *, overrides: Sequence[str] = (),
                         record: Optional[TrainingCheckpoint] = None) -> Tuple[DetTrainConfig, str]:
    """The config a detector checkpoint is rebuilt from, and where it came from: the config the checkpoint records
    (record: the checkpoint already read; else it is read when the file exists), else config.yaml beside the
    checkpoint (or beside its checkpoints/ folder). An explicit `config` gives every section but the model when the
    checkpoint records its own (then the recorded model section is used: the one that was trained). `overrides`
    ("key=value") apply last. Raises ConfigError in one line when there is none, CheckpointError for a
    classification checkpoint."""
    cfg, source, _ = _resolve_config(Path(checkpoint), config, overrides, record)
    return cfg, source


def load_detector(checkpoint: PathLike, config: Union[PathLike, DetTrainConfig, None] = None, *,
                  overrides: Sequence[str] = (), device="cpu", config_source: Optional[str] = None) -> LoadedDetector:
    """Rebuild the detector of a tools/train_det.py checkpoint (or of a bare state dict of one) and load every
    weight into it, strictly: the backbone weights the config names are not read.

    config: a file, a DetTrainConfig already loaded (config_source: how messages name it), or None: the lookup of
    find_detector_config. When the checkpoint records its config, the model section is always that one (the
    returned .note names what a given config had otherwise). overrides: "key=value" applied to a config read here.
    device: where the model goes. Raises ConfigError / CheckpointError in one line; a mismatch names the checkpoint
    and the config.
    """
    checkpoint = Path(checkpoint)
    register_input(checkpoint)
    record = TrainingCheckpoint.read(checkpoint)
    _refuse_classifier(record)
    if isinstance(config, DetTrainConfig):
        cfg, note = _adopt_recorded_model(copy.deepcopy(config), record)
        source = config_source or "the given config"
    else:
        cfg, source, note = _resolve_config(checkpoint, config, overrides, record)
    cfg.model.backbone.weights = ""  # the checkpoint holds every weight
    model = build_detector(cfg.model)
    load_matching_state(model, record.model_state, checkpoint=checkpoint, model_source=source)
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in record.categories}
    names = {label: by_id.get(cat, str(cat)) for label, cat in record.labels.items()}
    return LoadedDetector(model.to(device).eval(), cfg, source, checkpoint, record.labels, names,
                          list(record.categories), note)
