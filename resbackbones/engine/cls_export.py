"""Backbone-only export of a tools/train_cls.py checkpoint without training (train_cls --weights CKPT --export F).

    path, metrics = export_checkpoint("OUTPUT/checkpoints/best.pt", "backbone.safetensors")

Writes what ClsTrainer.export_backbone writes at the end of a run: the backbone's tensors (the EMA weights when the
run kept them) and WeightsMetadata of the checkpoint's own config, with its epochs / iterations and the val top-1 /
top-5 measured again on the config's val split (evaluation is deterministic, so these are the numbers the run
reported for those weights). Nothing is written in the run folder.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ..config import load_config
from ..config.cls import ClsConfig
from ..config.legacy import upgrade
from ..weights import WeightsMetadata, load_state_dict
from ..weights.checkpoint import TrainingCheckpoint
from .checkpoint import CheckpointError


def train_cls_config(checkpoint: TrainingCheckpoint) -> Optional[Dict[str, Any]]:
    """The config a tools/train_cls.py checkpoint recorded, in today's keys (config/legacy.py upgrades one stored
    before the shared vocabulary); None for any other checkpoint."""
    config = checkpoint.config
    if checkpoint.task != "cls" or config is None or not checkpoint.is_training_checkpoint:
        return None
    if WeightsMetadata.from_train_cls(config, num_classes=None) is None:
        return None
    return upgrade(config, "cls")[0]


def is_train_cls_checkpoint(path) -> bool:
    """Whether `path` is a tools/train_cls.py checkpoint (False for exports, torchvision files, missing files...)."""
    if not Path(path).is_file() or Path(path).suffix in (".safetensors", ".pkl"):
        return False
    try:
        return train_cls_config(TrainingCheckpoint.read(path)) is not None
    except (CheckpointError, ValueError):
        return False


def export_checkpoint(checkpoint, output, *, overrides: Sequence[str] = ()) -> Tuple[Path, Dict[str, float]]:
    """Export the backbone of tools/train_cls.py checkpoint `checkpoint` to `output` (safetensors + metadata).

    overrides: "key=value" applied to the checkpoint's config, e.g. data.root=DIR when the data moved, or
    train.device=cpu. Returns (written path, val metrics). Raises CheckpointError / ConfigError / DataError (one line).
    """
    from .cls_trainer import ClsTrainer
    from .ema import ModelEMA

    record = TrainingCheckpoint.read(checkpoint)
    config = train_cls_config(record)
    if config is None:
        raise CheckpointError(f"{checkpoint} is not a tools/train_cls.py checkpoint (no recorded config); "
                              f"give OUTPUT/checkpoints/last.pt or best.pt of a train_cls run")
    base = config  # a fresh dict: train_cls_config upgrades a copy
    model = base.setdefault("model", {})
    model["compile"] = False
    model.setdefault("backbone", {})["weights"] = ""  # the checkpoint holds the weights
    cfg = load_config(ClsConfig, None, overrides, base=base, base_source=f"{checkpoint} (its recorded config)")
    trainer = ClsTrainer(cfg, build_train=False, write_run_files=False)
    load_state_dict(trainer.model, record.model_state, source=str(checkpoint))
    if cfg.ema.enabled and record.state.get("ema"):
        trainer.ema = ModelEMA(trainer.model, decay=cfg.ema.decay, warmup_steps=cfg.ema.warmup_steps)
        trainer.ema.load_state_dict(record.state["ema"])
    trainer.iter = record.iteration
    metrics = trainer.evaluate()
    epochs = int(record.extras.get("epoch") or 0)
    return trainer.export_backbone(str(output), metrics=metrics, epochs=epochs), metrics
