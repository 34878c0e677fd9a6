"""The model inside any checkpoint of this package, or inside a bare state dict: read_model_checkpoint.

    ckpt = read_model_checkpoint("output/quickstart/last.pt")
    ckpt.state                           # {name: Tensor}: the model's state dict
    ckpt.task                            # "det" | "cls" | None (a bare state dict, or a file that does not say)
    ckpt.config                          # the training config as a dict where the file records it (train_cls)
    ckpt.metadata                        # WeightsMetadata of a train_cls checkpoint (arch, input conventions)
    ckpt.label_to_category, ckpt.categories   # train_det: what each label meant ({} and [] when not recorded)
    load_matching_state(model, ckpt.state, checkpoint=ckpt.path, model_source="configs/x.yaml")

Reading is torch.load(weights_only=True) through io.torch_load_refusing_code: a file that carries pickled code is
refused and nothing in it runs, and every record is checked against its CRC-32 (a damaged file is refused naming it;
integrity.py); load_matching_state refuses a tensor of another dtype kind than the model's. torchvision /
detectron2 / CIFAR weights get the one-line "convert it first" message.
Training checkpoints of both tasks have one schema (engine.checkpoint.Checkpointer writes it):
    {"task", "model", "optimizer", "scheduler", "scaler", "ema", "rng": [per rank], "trainer": {"iteration",
     "train_seconds", "hooks": {hook name: state}}, "config", "extras": {task's: classes / labels, config_changes}}
upgrade(raw) is the one place that reads the older layouts into it; TrainingCheckpoint.read(path) is the one reader
every path loading a training checkpoint uses (resume, evaluation, export, predict, build_classifier(weights=)).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .errors import CheckpointError
from .formats import sniff_format, unconverted_message
from .integrity import check_dtypes
from .io import torch_load_refusing_code
from .matching import diff_state_dict
from .metadata import WeightsMetadata

__all__ = ["CheckpointError", "ModelCheckpoint", "TrainingCheckpoint", "load_matching_state", "read_model_checkpoint",
           "upgrade"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ModelCheckpoint:
    """What read_model_checkpoint found in `path`.

    state: the model's state dict (checkpoint["model"], or the file itself when it is a bare state dict).
    task: checkpoint["task"], else inferred: "det" when labels are recorded, "cls" when the config is a train_cls one.
    raw: the whole file object (optimizer, scheduler, RNG states, loop position: what a resume needs).
    """

    path: Path
    state: Dict[str, torch.Tensor]
    task: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    metadata: Optional[WeightsMetadata] = None
    label_to_category: Dict[int, int] = field(default_factory=dict)  # model label -> category id of its training data
    categories: List[Dict[str, Any]] = field(default_factory=list)  # [{"id", "name"}] of its training data
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_training_checkpoint(self) -> bool:
        """False for a bare state dict, which has no optimizer or loop position to resume from."""
        return isinstance(self.raw.get("model"), Mapping)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_model_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> ModelCheckpoint:
    """weights_only read of a tools/train_cls.py or tools/train_det.py checkpoint, or of a bare state dict.

    Raises CheckpointError in one line naming the file: not found, unreadable, carrying pickled code (refused,
    nothing executed), another library's unconverted weights, or neither a checkpoint nor a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = torch_load_refusing_code(path, map_location, error=CheckpointError, what="checkpoint ",
                                   file_kind="checkpoint", chain_read_errors=False)
    message = unconverted_message(path, sniff_format(obj), expected="a training checkpoint")
    if message is not None:  # torchvision / detectron2 / CIFAR weights, also under "model" (their trainers' files)
        raise CheckpointError(message)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        raw = dict(obj)
    elif _is_state_dict(obj):
        return ModelCheckpoint(path, dict(obj), raw=dict(obj))
    else:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model' entry)")
    state = upgrade(raw)
    extras = state["extras"]
    config = dict(state["config"]) if isinstance(state.get("config"), Mapping) else None
    metadata = WeightsMetadata.from_train_cls(config, num_classes=extras.get("num_classes")) if config else None
    labels = {int(k): int(v) for k, v in (extras.get("label_to_category") or {}).items()}
    categories = [dict(c) for c in extras.get("categories") or []]
    task = state["task"]
    if task is None:  # written before checkpoints named their task
        task = "det" if labels or categories else "cls" if metadata is not None else None
    return ModelCheckpoint(path, dict(raw["model"]), task=task, config=config, metadata=metadata,
                           label_to_category=labels, categories=categories, raw=raw)


# Keys of the layouts before the schema, and where upgrade() puts them.
_EXTRAS = ("classes", "arch", "num_classes", "epoch", "label_to_category", "categories", "config_changes")
_BEST = ("best_metric", "best_metric_name", "best_iteration")


def upgrade(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Any training checkpoint this package wrote, in the one schema (module docstring). The only reader of older
    layouts: train_cls's flat keys ("global_iter", "epoch", "iter_in_epoch", "partial" epoch sums, "arch",
    "classes"), train_det's ("iteration", "label_to_category", "best_metric"...), one RNG dict for every rank, no
    "task". A file already in the schema is returned as a shallow copy with every key present."""
    raw = dict(raw)
    if isinstance(raw.get("trainer"), Mapping):
        state = {key: raw.get(key) for key in ("task", "model", "optimizer", "scheduler", "scaler", "ema", "rng",
                                                "config")}
        state["trainer"] = dict(raw["trainer"])
        state["extras"] = dict(raw.get("extras") or {})
    else:
        iteration = raw.get("global_iter", raw.get("iteration", 0))
        hooks: Dict[str, Any] = {}
        if raw.get("best_metric") is not None:
            hooks["BestCheckpointer"] = {k: raw.get(k) for k in _BEST}
        if raw.get("partial"):  # a mid-epoch checkpoint's sums so far (every rank's, together)
            hooks["EpochBoundary"] = {"sums": dict(raw["partial"])}
        state = {"task": raw.get("task"), "model": raw.get("model"), "optimizer": raw.get("optimizer"),
                 "scheduler": raw.get("scheduler"), "scaler": raw.get("scaler") or None, "ema": raw.get("ema"),
                 "rng": raw.get("rng"), "config": raw.get("config"),
                 "trainer": {"iteration": int(iteration), "train_seconds": float(raw.get("train_seconds", 0.0)),
                             "hooks": hooks},
                 "extras": {k: raw[k] for k in _EXTRAS if k in raw}}
    if isinstance(state["rng"], Mapping):  # one dict, applied to every rank
        state["rng"] = [state["rng"]]
    state["trainer"].setdefault("hooks", {})
    return state


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A training checkpoint of either task read through the one reader (io.torch_load_refusing_code: CRCs
    checked, pickled code refused, the file registered as an input) and upgraded to the one schema.

        ckpt = TrainingCheckpoint.read("OUTPUT/checkpoints/last.pt")
        ckpt.task, ckpt.model_state, ckpt.ema_state, ckpt.config, ckpt.labels, ckpt.categories, ckpt.trainer_state

    state: the whole upgraded dict (optimizer, scheduler, scaler, rng: what a resume loads). A bare state dict
    reads as a checkpoint with only model_state (task None, no trainer state).
    """

    path: Path
    state: Dict[str, Any] = field(repr=False)
    metadata: Optional[WeightsMetadata] = None

    @classmethod
    def read(cls, path: PathLike, map_location: Union[str, torch.device] = "cpu") -> "TrainingCheckpoint":
        """Read `path` (read_model_checkpoint's refusals, one CheckpointError line each)."""
        record = read_model_checkpoint(path, map_location)
        if not record.is_training_checkpoint:
            state = upgrade({"model": record.state})
            state["trainer"] = {}
            return cls(record.path, state)
        state = upgrade(record.raw)
        state["task"] = record.task
        return cls(record.path, state, record.metadata)

    @classmethod
    def of(cls, raw: Mapping[str, Any], path: PathLike) -> "TrainingCheckpoint":
        """The checkpoint in a file object already read through the one reader (weights.resolve sniffs any
        weights file first): `raw` has a "model" mapping."""
        state = upgrade(raw)
        extras = state["extras"]
        config = state["config"] if isinstance(state.get("config"), Mapping) else None
        metadata = WeightsMetadata.from_train_cls(config, num_classes=extras.get("num_classes")) if config else None
        return cls(Path(path), state, metadata)

    @property
    def is_training_checkpoint(self) -> bool:
        """False for a bare state dict: nothing to resume from."""
        return bool(self.state["trainer"])

    @property
    def task(self) -> Optional[str]:
        return self.state["task"]

    @property
    def model_state(self) -> Dict[str, torch.Tensor]:
        return dict(self.state["model"])

    @property
    def ema_state(self) -> Optional[Dict[str, torch.Tensor]]:
        """The EMA weights' state dict when the run kept them (what its evaluations measured), else None."""
        ema = self.state.get("ema")
        return dict(ema["module"]) if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping) else None

    @property
    def config(self) -> Optional[Dict[str, Any]]:
        """The recorded config as stored (config.legacy.upgrade reads older vocabularies), None when not recorded."""
        config = self.state.get("config")
        return dict(config) if isinstance(config, Mapping) else None

    @property
    def extras(self) -> Dict[str, Any]:
        return self.state["extras"]

    @property
    def labels(self) -> Dict[int, int]:
        """Detection: model label -> category id of the training data ({} when not recorded)."""
        return {int(k): int(v) for k, v in (self.extras.get("label_to_category") or {}).items()}

    @property
    def categories(self) -> List[Dict[str, Any]]:
        """Detection: [{"id", "name"}] of the training data ([] when not recorded)."""
        return [dict(c) for c in self.extras.get("categories") or []]

    @property
    def trainer_state(self) -> Dict[str, Any]:
        """{"iteration", "train_seconds", "hooks"}; {} for a bare state dict."""
        return self.state["trainer"]

    @property
    def iteration(self) -> int:
        return int(self.trainer_state.get("iteration", 0))


def load_matching_state(model: torch.nn.Module, saved: Mapping[str, torch.Tensor], *, checkpoint: PathLike,
                        model_source: str) -> None:
    """Load `saved` into `model` only if every key and shape matches; else one CheckpointError naming both the
    checkpoint and `model_source` (where the model's config came from) and listing what differs (a config with
    another class count, backbone or head than the run that wrote the checkpoint)."""
    check_dtypes(saved, f"checkpoint {checkpoint}", expected=model.state_dict(), error=CheckpointError)
    diff = diff_state_dict(model, saved)  # no optional keys: the checkpoint was written from such a model
    problems = {"missing": diff.missing, "unexpected": diff.unexpected,
                "of another shape": [f"{k} {theirs} vs {mine}" for k, mine, theirs in diff.reshaped]}
    if any(problems.values()):
        listed = "; ".join(f"{what} {len(keys)} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"
                           for what, keys in problems.items() if keys)
        raise CheckpointError(f"checkpoint {checkpoint} does not match the model of {model_source}: {listed}; give "
                              f"the config it was trained with")
    model.load_state_dict(saved)
