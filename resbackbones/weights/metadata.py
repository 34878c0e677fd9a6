"""What a weights file carries besides tensors: architecture, source, preprocessing, stride placement.

Stored as str -> str in the safetensors header (or the torch file's "metadata" dict) via
rb.weights.save(model, path, metadata=meta.to_dict()). `load_into` reads it back and refuses weights whose
stride_in_1x1 or input format conflicts with the model or pipeline: a torchvision (stride in 3x3, RGB 0-1)
checkpoint in a caffe-style model (stride in 1x1, BGR 0-255) runs without error but silently loses accuracy.
"""
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Mapping, Optional, Tuple

from torch import nn

from ..config.cls import IMAGENET_MEAN, IMAGENET_STD
from ..config.legacy import upgrade
from .errors import WeightsError

INPUT_FORMATS = ("RGB", "BGR")


@dataclass
class WeightsMetadata:
    """arch: registered backbone name (e.g. "resnet50"); source: "torchvision" | "detectron2" | "cifar" | ...
    input_format: channel order the weights expect; pixel_mean/std: per channel in that order, in units of
    pixel_scale (1.0: images in 0-1; 255.0: images in 0-255); stride_in_1x1: where Bottleneck blocks put their
    stride (None: no Bottleneck / unknown); num_classes: classifier outputs (None: backbone only)."""

    arch: str = "unknown"
    source: str = "unknown"
    input_format: str = "RGB"
    pixel_mean: Tuple[float, ...] = IMAGENET_MEAN
    pixel_std: Tuple[float, ...] = IMAGENET_STD
    pixel_scale: float = 1.0
    stride_in_1x1: Optional[bool] = None
    num_classes: Optional[int] = None
    notes: str = ""
    extra: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _field_problems(asdict(self))
        if problem:
            raise WeightsError(f"weights metadata: {problem[0]} {problem[1]}")
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        self.pixel_scale = float(self.pixel_scale)

    def to_dict(self) -> Dict[str, str]:
        """str -> str (JSON-encoded values) for safetensors metadata."""
        out = {f"rb.{k}": json.dumps(v) for k, v in asdict(self).items() if k != "extra"}
        out.update({str(k): str(v) for k, v in self.extra.items()})
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, str], *, source: str = "weights") -> Optional["WeightsMetadata"]:
        """Parse what to_dict wrote; None if the file carries no resbackbones metadata.

        Every rb.* value is JSON of its field's type, checked here: a WeightsError names `source` (the file) and the
        key when it is not valid JSON, of another type (a boolean written as the string "false", which Python would
        take as true), a NaN / infinite mean or std, or a std <= 0 (it divides every pixel). The library has always
        written these values with json.dumps (true / false / null), so no other spelling is accepted."""
        names = {f.name for f in fields(cls)} - {"extra"}
        values = {}
        for key, text in raw.items():
            if key.startswith("rb.") and key[3:] in names:
                try:
                    values[key[3:]] = json.loads(text)
                except (json.JSONDecodeError, TypeError) as error:
                    raise WeightsError(f"weights metadata {key}={text!r} of {source} is not valid JSON: "
                                       f"{error}") from None
        if not values:
            return None
        problem = _field_problems(values)
        if problem:
            raise WeightsError(f"weights metadata rb.{problem[0]} of {source} {problem[1]}; save the weights again "
                               f"with valid metadata (rb.weights.save(..., metadata=WeightsMetadata(...).to_dict()))")
        extra = {k: v for k, v in raw.items() if not k.startswith("rb.")}
        return cls(**values, extra=extra)

    # -- the known sources ----------------------------------------------------------------------------------
    @classmethod
    def torchvision(cls, arch: str, num_classes: Optional[int] = 1000) -> "WeightsMetadata":
        return cls(arch=arch, source="torchvision", input_format="RGB", pixel_mean=IMAGENET_MEAN,
                   pixel_std=IMAGENET_STD, pixel_scale=1.0, stride_in_1x1=False if _has_bottleneck(arch) else None,
                   num_classes=num_classes, notes="torchvision layout: stride in the 3x3 conv; RGB in 0-1")

    @classmethod
    def detectron2_msra(cls, arch: str, num_classes: Optional[int] = None) -> "WeightsMetadata":
        # detectron2's defaults for the MSRA caffe2 ImageNet weights (MODEL.PIXEL_MEAN/STD, INPUT.FORMAT).
        return cls(arch=arch, source="detectron2", input_format="BGR", pixel_mean=(103.530, 116.280, 123.675),
                   pixel_std=(1.0, 1.0, 1.0), pixel_scale=255.0,
                   stride_in_1x1=True if _has_bottleneck(arch) else None, num_classes=num_classes,
                   notes="MSRA caffe2 weights: stride in the 1x1 conv; BGR in 0-255; use norm='FrozenBN'")


    @classmethod
    def from_train_cls(cls, config: Mapping, *, num_classes: Optional[int],
                       extra: Optional[Mapping[str, str]] = None) -> Optional["WeightsMetadata"]:
        """What tools/train_cls.py trained with, from its config as a dict (config.to_dict(ClsConfig), or one stored
        before the shared vocabulary: config/legacy.py upgrades it): the arch (model.backbone.name), RGB images in
        0-1 normalised by data.mean/std, stride placement from model.backbone.options. None when `config` is not a
        classification training config (no data.mean/std, e.g. a detector checkpoint's)."""
        data = config.get("data") or {}
        if "mean" not in data or "std" not in data:
            return None
        backbone = (upgrade(config, "cls")[0].get("model") or {}).get("backbone") or {}
        if "name" not in backbone:
            return None
        arch = str(backbone["name"])
        options = backbone.get("options") or {}
        stride = bool(options.get("stride_in_1x1", False)) if _has_bottleneck(arch) else None
        notes = f"tools/train_cls.py: recipe {data.get('recipe')}, crop {data.get('crop_size')} px, options {dict(options)}"
        return cls(arch=arch, source="resbackbones train_cls", input_format="RGB", pixel_mean=tuple(data["mean"]),
                   pixel_std=tuple(data["std"]), pixel_scale=1.0, stride_in_1x1=stride, num_classes=num_classes,
                   notes=notes, extra={str(k): str(v) for k, v in (extra or {}).items()})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_problems(values: Mapping) -> Optional[Tuple[str, str]]:
    """(field, what is wrong with its value) for the first invalid field of `values`, None when all are valid."""
    shown = {k: json.dumps(v) if not isinstance(v, tuple) else json.dumps(list(v)) for k, v in values.items()
             if k != "extra"}
    for name in ("arch", "source", "notes"):
        if name in values and not isinstance(values[name], str):
            return name, f"is {shown[name]}, not a string"
    if "input_format" in values and values["input_format"] not in INPUT_FORMATS:
        return "input_format", f"is {shown['input_format']}, not one of {', '.join(map(json.dumps, INPUT_FORMATS))}"
    for name in ("pixel_mean", "pixel_std"):
        value = values.get(name, ())
        if name in values and (not isinstance(value, (list, tuple)) or not value
                               or not all(_is_number(v) and math.isfinite(v) for v in value)):
            return name, f"is {shown[name]}, not a list of finite numbers"
    if "pixel_std" in values and any(v <= 0 for v in values["pixel_std"]):
        return "pixel_std", f"is {shown['pixel_std']}: every std must be > 0 (pixels are divided by it)"
    if "pixel_mean" in values and "pixel_std" in values and len(values["pixel_mean"]) != len(values["pixel_std"]):
        return "pixel_std", f"has {len(values['pixel_std'])} values but pixel_mean {len(values['pixel_mean'])}"
    if "pixel_scale" in values and (not _is_number(values["pixel_scale"]) or values["pixel_scale"] not in (1, 255)):
        return "pixel_scale", f"is {shown['pixel_scale']}, not 1.0 (0-1 images) or 255.0 (0-255 images)"
    if values.get("stride_in_1x1") is not None and not isinstance(values["stride_in_1x1"], bool):
        return "stride_in_1x1", f"is {shown['stride_in_1x1']}, not a JSON boolean (true, false) or null"
    classes = values.get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        return "num_classes", f"is {shown['num_classes']}, not a positive integer or null"
    return None


def _has_bottleneck(arch: str) -> bool:
    return any(arch.startswith(p) for p in ("resnet50", "resnet101", "resnet152", "resnext", "wide_resnet",
                                            "plain50", "plain101", "plain152"))


def check_compatible(meta: Optional[WeightsMetadata], model: nn.Module, *, input_format: Optional[str] = None,
                     source: str = "weights") -> None:
    """Raise WeightsError if `meta` conflicts with `model` (stride_in_1x1) or the pipeline's `input_format`.

    The model's stride placement is read from any submodule's `stride_in_1x1` attribute (ResNet backbones).
    Missing metadata, or metadata that leaves a field unknown, is not an error.
    """
    if meta is None:
        return
    strides = [m.stride_in_1x1 for m in model.modules() if isinstance(getattr(m, "stride_in_1x1", None), bool)]
    model_stride = strides[0] if strides else None
    problems = []
    if meta.stride_in_1x1 is not None and model_stride is not None and meta.stride_in_1x1 != model_stride:
        where = {True: "the 1x1 conv (caffe/detectron2 style)", False: "the 3x3 conv (torchvision style)"}
        problems.append(
            f"the weights were trained with the stride in {where[meta.stride_in_1x1]} but the model puts it in "
            f"{where[model_stride]}; build the model with stride_in_1x1={meta.stride_in_1x1}"
        )
    if input_format is not None and input_format != meta.input_format:
        problems.append(
            f"the weights expect {meta.input_format} input (mean {list(meta.pixel_mean)}, std "
            f"{list(meta.pixel_std)} on a 0-{int(meta.pixel_scale) if meta.pixel_scale > 1 else 1} scale) but the "
            f"pipeline feeds {input_format}"
        )
    if problems:
        raise WeightsError(f"{source} ({meta.source} {meta.arch}) do not fit this model: " + "; ".join(problems))


def load_into(model: nn.Module, path, *, input_format: Optional[str] = None, strict: bool = True,
              prefix: str = "") -> Optional[WeightsMetadata]:
    """Read weights + metadata from `path`, refuse conflicts (check_compatible), then load strictly.

    prefix: keep only keys starting with it and strip it (e.g. "backbone." to load a Classifier file into a
    backbone). Returns the file's metadata (None if it has none).
    """
    from .io import load_with_metadata
    from .matching import load_state_dict

    from .formats import sniff_format, unconverted_message

    state, raw = load_with_metadata(path)
    message = unconverted_message(path, sniff_format(state))
    if message is not None:
        raise WeightsError(message)
    meta = WeightsMetadata.from_dict(raw, source=str(path))
    check_compatible(meta, model, input_format=input_format, source=str(path))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict(model, state, strict=strict, source=str(path))
    return meta
