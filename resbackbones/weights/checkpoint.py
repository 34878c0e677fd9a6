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
engine/checkpoint.py reads whole training checkpoints (optimizer, RNG states) for a resume through this module.
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

__all__ = ["CheckpointError", "ModelCheckpoint", "load_matching_state", "read_model_checkpoint"]

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
    config = dict(raw["config"]) if isinstance(raw.get("config"), Mapping) else None
    metadata = WeightsMetadata.from_train_cls(config, num_classes=raw.get("num_classes")) if config else None
    labels = {int(k): int(v) for k, v in (raw.get("label_to_category") or {}).items()}
    categories = [dict(c) for c in raw.get("categories") or []]
    task = raw.get("task")
    if task is None:  # written before checkpoints named their task
        task = "det" if labels or categories else "cls" if metadata is not None else None
    return ModelCheckpoint(path, dict(raw["model"]), task=task, config=config, metadata=metadata,
                           label_to_category=labels, categories=categories, raw=raw)


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
