"""The input conventions weights carry: which normalisation and channel order a model fed with them expects.

The WeightsMetadata that rb.weights.resolve_weights leaves on a backbone (`backbone.weights_metadata`) records
them; a detector's transform takes its image mean / std / format from here (rb.detection.build_detector).
"""
from typing import Optional, Tuple

from .errors import WeightsError
from .metadata import IMAGENET_MEAN, IMAGENET_STD, WeightsMetadata

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
