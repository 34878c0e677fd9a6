"""A detectron2 config's preprocessing against the one recorded in our weights (MODEL.RESBACKBONES.WEIGHTS).

detectron2 keeps preprocessing in the config (INPUT.FORMAT, MODEL.PIXEL_MEAN / PIXEL_STD, and for our backbone
MODEL.RESBACKBONES.STRIDE_IN_1X1); our weight files keep it in their metadata. `cfg_conventions` reads the config
side, `refuse_mismatch` stops a build or load whose two sides differ, `apply_weights_conventions` adopts the
weights' side. The model side (`model_conventions`) lives with the adapter in integrations/detectron2_adapter.py, which
re-exports these names: import them from there.
"""
import logging
from typing import Dict, List, Optional

from detectron2.config import CfgNode as CN

from ..backbones.registry import get_entry
from ..weights import WeightsError, load_with_metadata
from .detectron2_weights import Conventions, conventions_from_metadata

logger = logging.getLogger(__name__)

RESNET_FAMILIES = ("resnet", "plain", "resnext")

_CFG_KEYS = {
    "input_format": "INPUT.FORMAT", "pixel_mean": "MODEL.PIXEL_MEAN", "pixel_std": "MODEL.PIXEL_STD",
    "stride_in_1x1": "MODEL.RESBACKBONES.STRIDE_IN_1X1",
}


def _weights_metadata(cfg: CN) -> Optional[Dict[str, str]]:
    path = cfg.MODEL.RESBACKBONES.WEIGHTS
    return load_with_metadata(path)[1] if path else None


def configured_stride_in_1x1(cfg: CN) -> Optional[bool]:
    """MODEL.RESBACKBONES.STRIDE_IN_1X1, or when unset (None) the value recorded in MODEL.RESBACKBONES.WEIGHTS;
    None when neither says."""
    value = cfg.MODEL.RESBACKBONES.STRIDE_IN_1X1
    if value is None and cfg.MODEL.RESBACKBONES.WEIGHTS:
        value = conventions_from_metadata(_weights_metadata(cfg), source=cfg.MODEL.RESBACKBONES.WEIGHTS).stride_in_1x1
    return value


def cfg_conventions(cfg: CN) -> Conventions:
    """What the config feeds the backbone: INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, the backbone's stride_in_1x1."""
    arch_is_resnet = get_entry(cfg.MODEL.RESBACKBONES.ARCH).family in RESNET_FAMILIES
    stride = configured_stride_in_1x1(cfg)
    return Conventions(
        input_format=cfg.INPUT.FORMAT, pixel_mean=tuple(cfg.MODEL.PIXEL_MEAN), pixel_std=tuple(cfg.MODEL.PIXEL_STD),
        stride_in_1x1=(bool(stride) if stride is not None else False) if arch_is_resnet else None,
    )


def _rounded(value):
    return [round(v, 3) for v in value] if isinstance(value, (list, tuple)) else value


def refuse_mismatch(recorded: Conventions, configured: Conventions, *, source: str) -> None:
    """Raise WeightsError listing each config key whose value differs from what `source` was trained with."""
    problems = [(f, _rounded(want), _rounded(have)) for f, want, have in recorded.mismatches(configured)]
    if problems:
        lines = "\n".join(f"  {_CFG_KEYS[f]}: weights need {want!r}, config has {have!r}" for f, want, have in problems)
        fixes = " ".join(f"{_CFG_KEYS[f]} \"{want}\"" for f, want, _ in problems)
        raise WeightsError(
            f"{source} was trained with other preprocessing than this config gives it (loading it anyway would "
            f"silently cost accuracy):\n{lines}\nSet them in the config (e.g. {fixes}), or call "
            f"apply_weights_conventions(cfg) / tools/train_d2.py, which does that for you."
        )


def apply_weights_conventions(cfg: CN) -> List[str]:
    """Adopt the preprocessing recorded in MODEL.RESBACKBONES.WEIGHTS: sets INPUT.FORMAT, MODEL.PIXEL_MEAN/STD and
    MODEL.RESBACKBONES.STRIDE_IN_1X1 (cfg must not be frozen). Returns one line per changed key (logged too)."""
    if not cfg.MODEL.RESBACKBONES.WEIGHTS:
        return []
    path = cfg.MODEL.RESBACKBONES.WEIGHTS
    recorded = conventions_from_metadata(_weights_metadata(cfg), source=path)
    changes = []
    for field, key in _CFG_KEYS.items():
        value = getattr(recorded, field)
        if value is None:
            continue
        node, leaf = cfg, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        old = node[leaf[-1]]
        new = list(value) if isinstance(value, tuple) else value
        if old != new:
            node[leaf[-1]] = new
            changes.append(f"{key}: {old!r} -> {new!r} (from {path})")
    for line in changes:
        logger.info("resbackbones: %s", line)
    return changes
