"""What a detector takes from its backbone weights: the input conventions, and whether it can train at all.

Reading the weights (files of every format, "torchvision:<ENUM>") is rb.weights.resolve_weights' job, reached
through rb.build_backbone(name, weights=...); here we only use the WeightsMetadata it leaves on the backbone.
"""
from typing import Optional, Tuple

from ..config import ConfigError
from ..weights import WeightsError, WeightsMetadata
from ..weights.metadata import IMAGENET_MEAN, IMAGENET_STD

Triple = Tuple[float, float, float]
# A model with no weights metadata and no explicit setting: torchvision's ImageNet convention.
DEFAULT_FORMAT = "RGB"


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def input_conventions(icfg, meta: Optional[WeightsMetadata], *, source: str = "") -> Tuple[Triple, Triple, str]:
    """(image_mean, image_std, format) for the detector's transform, in [0, 1] units of images in that order.

    icfg: the config's model.input (None in image_mean / image_std / format = not set). Each unset value comes from
    the weights' metadata, else torchvision's ImageNet RGB convention. A value set in the config that conflicts
    with the metadata raises WeightsError naming both (a silent mismatch costs ~10 AP).
    """
    recorded = None
    if meta is not None:
        recorded = {"format": meta.input_format,
                    "image_mean": tuple(v / meta.pixel_scale for v in meta.pixel_mean),
                    "image_std": tuple(v / meta.pixel_scale for v in meta.pixel_std)}
    fallback = {"format": DEFAULT_FORMAT, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    chosen = {}
    for key in ("image_mean", "image_std", "format"):
        explicit = getattr(icfg, key)
        if explicit is None:
            chosen[key] = (recorded or fallback)[key]
            continue
        if recorded is not None:
            same = explicit == recorded[key] if key == "format" else _close(explicit, recorded[key])
            if not same:
                shown = recorded[key] if key == "format" else [round(v, 5) for v in recorded[key]]
                raise WeightsError(
                    f"model.input.{key} is {explicit if key == 'format' else list(explicit)} but the backbone "
                    f"weights {source} ({meta.source} {meta.arch}) expect {shown} ({meta.input_format} input, 0-1 "
                    f"units): remove model.input.{key} (it follows the weights) or give weights trained that way"
                )
        chosen[key] = tuple(explicit) if key != "format" else explicit
    return tuple(chosen["image_mean"]), tuple(chosen["image_std"]), chosen["format"]


def refuse_untrainable_backbone(cfg) -> None:
    """Refuse to train a randomly initialised backbone with FrozenBN (cfg: the DetectorConfig).

    FrozenBN of a fresh backbone is the identity (mean 0, var 1, weight 1, bias 0), so nothing normalises the
    residual sums: ResNet-101's res4 reaches mean |x| ~ 2e4 before the first step and training diverges at once.
    """
    bcfg = cfg.backbone
    if bcfg.norm == "FrozenBN" and not bcfg.weights:
        raise ConfigError(
            "model.backbone.norm is FrozenBN but model.backbone.weights is empty: frozen statistics of a random "
            "backbone normalise nothing and training diverges at iteration 1; set model.backbone.norm to BN or GN, "
            "or give model.backbone.weights (e.g. torchvision:IMAGENET1K_V1, or a tools/train_cls.py --export file)"
        )
