"""`torchvision:<ENUM>` references: torchvision's own Weights enums, its download cache, our converter.

    resolve_torchvision("resnet50", "IMAGENET1K_V2")   # or "DEFAULT"
    -> (Classifier state dict in our names, WeightsMetadata, the cached file)

The enum comes from torchvision.models.get_model_weights(arch); its url names the file that torchvision itself
caches as torch.hub.get_dir()/checkpoints/<file name of the url> (i.e. $TORCH_HOME/hub/checkpoints), so a file
torchvision already downloaded is reused and nothing is stored twice. Mean/std come from the enum's
transforms() (e.g. VGG-16 IMAGENET1K_FEATURES: 0-255 caffe-style), accuracy and recipe from its meta.

The cached file must match the sha256 prefix in its name (check_hash_in_name), as a download must.

Downloads: only when the file is not cached, and only when allowed: `download=True`, or `download=None` and the
environment variable RESBACKBONES_OFFLINE is not set to 1/true/yes. Otherwise WeightsError names the exact file
and folder. The file is read with weights_only=True (torchvision's own loader would unpickle freely).
"""
import hashlib
import os
import re
from pathlib import Path
from typing import Dict, Optional, Set, Tuple
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision.models

from .convert import convert
from .errors import WeightsError
from .metadata import WeightsMetadata

PREFIX = "torchvision:"
OFFLINE_ENV = "RESBACKBONES_OFFLINE"
UNCHECKED_ENV = "RESBACKBONES_UNCHECKED_TORCHVISION_CACHE"
_HASH_CHECKED: Set[Tuple[str, int, int]] = set()
# torch.hub's naming rule: <name>-<first hex digits of the sha256>.<ext>; the download is checked against it.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")

StateDict = Dict[str, torch.Tensor]


def is_torchvision_reference(reference: object) -> bool:
    return isinstance(reference, str) and reference.startswith(PREFIX)


def downloads_allowed(download: Optional[bool] = None) -> bool:
    """download if given, else True unless $RESBACKBONES_OFFLINE is 1/true/yes."""
    if download is not None:
        return bool(download)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")


def weights_enum(arch: str, enum_name: str):
    """torchvision's Weights enum member for `arch` (e.g. ResNet50_Weights.IMAGENET1K_V2; DEFAULT is an alias).

    Raises WeightsError when torchvision has no weights for `arch`, or `enum_name` is not one of its members
    (the message lists the valid ones).
    """
    try:
        enum_cls = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise WeightsError(
            f"torchvision has no pretrained weights for {arch!r}, so 'torchvision:{enum_name}' cannot be resolved; "
            f"give a weights file instead (ours, torchvision .pth, detectron2 .pkl or a tools/train_cls.py export)"
        ) from None
    members = enum_cls.__members__
    if enum_name not in members:
        valid = ", ".join(f"{name} (= {member.name})" if name != member.name else name for name, member in
                          members.items())
        raise WeightsError(f"unknown torchvision weights {enum_name!r} for {arch}; valid: {valid}")
    return members[enum_name]


def cached_file(weights) -> Path:
    """Where torchvision caches the enum's file: torch.hub.get_dir()/checkpoints/<file name of its url>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def metadata_for(arch: str, weights) -> WeightsMetadata:
    """WeightsMetadata from the enum: mean/std of its transforms() (0-1 units, RGB), classes, accuracy, recipe."""
    preset = weights.transforms()
    classes = len(weights.meta.get("categories") or []) or None
    meta = WeightsMetadata.torchvision(arch, num_classes=classes)
    meta.pixel_mean, meta.pixel_std = tuple(preset.mean), tuple(preset.std)
    meta.notes = f"torchvision {type(weights).__name__}.{weights.name}; " + meta.notes
    extra = {"torchvision_weights": f"{type(weights).__name__}.{weights.name}", "url": weights.url}
    for dataset, metrics in (weights.meta.get("_metrics") or {}).items():
        extra.update({f"{dataset} {k}": str(v) for k, v in metrics.items()})
    if weights.meta.get("recipe"):
        extra["recipe"] = str(weights.meta["recipe"])
    meta.extra = extra
    return meta


def _fetch(weights, path: Path, *, arch: str, download: Optional[bool]) -> Path:
    label = f"torchvision:{weights.name} ({type(weights).__name__}.{weights.name}, {arch})"
    if path.is_file():
        return path
    by_hand = f"put {path.name} (from {weights.url}) in {path.parent}"
    if not downloads_allowed(download):
        raise WeightsError(f"{label} is not in torchvision's download cache and downloads are off "
                           f"({OFFLINE_ENV}=1): {by_hand}, or unset {OFFLINE_ENV} to download it")
    path.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(path.name)
    try:
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None, progress=True)
    except (URLError, OSError, RuntimeError) as error:
        raise WeightsError(f"{label}: download failed ({str(error).splitlines()[0]}); {by_hand}") from None
    return path


def check_hash_in_name(path: Path) -> None:
    """Refuse a cached file whose sha256 does not start with the hex digits its name carries (torch.hub's rule,
    <name>-<sha256 prefix>.<ext>, which torch.hub checks only when it downloads): a file damaged in the cache, or
    another file saved under that name, would otherwise load as the named weights. Checked once per file content
    (path, size, mtime) and process. Escape hatch for test suites that place stand-in weights under torchvision's
    names: RESBACKBONES_UNCHECKED_TORCHVISION_CACHE=1 (never set it for real use)."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    if os.environ.get(UNCHECKED_ENV, "").strip().lower() in ("1", "true", "yes"):
        return
    stat = path.stat()
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _HASH_CHECKED:
        return
    expected = match.group(1)
    with open(path, "rb") as handle:
        found = hashlib.file_digest(handle, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else \
            _sha256(handle)
    if not found.startswith(expected):
        raise WeightsError(f"torchvision cache file {path} is not the file its name promises: its sha256 starts with "
                           f"{found[:len(expected)]}, the name says {expected} (damaged, or another file saved "
                           f"under that name); delete it to download it again, or put the right file there")
    _HASH_CHECKED.add(key)


def _sha256(handle) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def resolve_torchvision(arch: str, enum_name: str, *,
                        download: Optional[bool] = None) -> Tuple[StateDict, WeightsMetadata, Path]:
    """(our Classifier state dict, metadata, cached file) for torchvision's `arch` weights `enum_name`.

    Features-only enums (VGG-16 IMAGENET1K_FEATURES: classifier not trained) keep only backbone.* keys.
    """
    weights = weights_enum(arch, enum_name)
    path = _fetch(weights, cached_file(weights), arch=arch, download=download)
    check_hash_in_name(path)
    state, _ = convert("torchvision", path)
    meta = metadata_for(arch, weights)
    if meta.num_classes is None:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    return state, meta, path
