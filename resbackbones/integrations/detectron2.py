"""Our backbones inside detectron2: BACKBONE_REGISTRY builders, config keys, LazyConfig nodes, weight checks.

The entry point of the detectron2 bridge (only integrations/detectron2*.py import detectron2; the config-side
preprocessing checks live in detectron2_conventions.py and are re-exported here). Importing it registers, in
detectron2's BACKBONE_REGISTRY:

    build_resbackbones_backbone            any of rb.list_backbones() (ResNet, plain, ResNeXt, VGG, CIFAR) alone,
                                           e.g. res4 for C4 heads or conv5 for a VGG-16 Faster R-CNN
    build_resbackbones_fpn_backbone        the same under detectron2's FPN + LastLevelMaxPool (p2..p6, Mask R-CNN)
    build_resbackbones_retinanet_fpn_backbone   FPN + LastLevelP6P7 from the last bottom-up feature (RetinaNet)

Use from a yaml config (see configs/detectron2/):

    from detectron2.config import get_cfg
    from resbackbones.integrations.detectron2 import add_resbackbones_config
    cfg = get_cfg(); add_resbackbones_config(cfg)
    cfg.merge_from_file("configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml")  # NAME: build_resbackbones_fpn_backbone
    model = detectron2.modeling.build_model(cfg)

or from a LazyConfig (configs/detectron2/mask_rcnn_R_50_FPN_lazy.py): `lazy_fpn_backbone(name="resnet50", ...)` gives
L(FPN)(bottom_up=L(build_adapter)(name=..., ...), ...).

The adapter's parameters carry detectron2's own names (`res2.0.conv1.weight`, `stem.conv1.norm.*`), so detectron2
checkpoints of ResNets (model zoo .pkl, DetectionCheckpointer .pth) load into models using our backbone unchanged.
Our weight files (MODEL.RESBACKBONES.WEIGHTS) carry their preprocessing; a config that disagrees is refused at
build time with the config lines to change (see `apply_weights_conventions` to adopt them instead).
"""
import inspect
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode as CN
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec as D2ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling import Backbone as D2Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ..backbones import Backbone, build_backbone
from ..backbones.registry import builder_options, get_entry
from ..io.outputs import save_torch_atomic, write_text_atomic
from ..weights import WeightsError, load_state_dict, load_with_metadata, save
from ..weights.metadata import WeightsMetadata
from .detectron2_conventions import (
    RESNET_FAMILIES,
    apply_weights_conventions,
    cfg_conventions,
    configured_stride_in_1x1,
    refuse_mismatch,
)
from .detectron2_weights import (
    Conventions,
    conventions_from_metadata,
    conventions_to_metadata,
    from_detectron2_names,
    to_detectron2_names,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ResBackbone", "ResBackbonesCheckpointer", "add_resbackbones_config", "apply_weights_conventions",
    "backbone_options", "build_adapter", "build_resbackbones_backbone", "build_resbackbones_fpn_backbone",
    "build_resbackbones_retinanet_fpn_backbone", "cfg_conventions", "export_backbone_weights", "lazy_fpn_backbone",
    "model_conventions", "save_for_detectron2",
]

# -- the adapter --------------------------------------------------------------------------------------------------
class ResBackbone(D2Backbone):
    """A detectron2 Backbone around one of ours: images [N, C, H, W] -> {name: [N, C_k, H / s_k, W / s_k]}.

    The stages of `backbone` are registered directly on this module, so parameter names are detectron2's
    (`stem.conv1.weight`, `res2.0.conv1.norm.running_mean`, VGG: `conv1.conv1_1.weight`); the wrapped module
    still runs the forward (out_features, activation checkpointing, norm_eval).
    output_shape() is in detectron2's ShapeSpec(channels=, stride=).
    """

    def __init__(self, backbone: Backbone, *, arch: Optional[str] = None):
        super().__init__()
        self.arch = arch  # registered name, recorded in exported weights
        if not isinstance(backbone, Backbone):
            raise TypeError(f"ResBackbone wraps a resbackbones Backbone, got {type(backbone).__name__}")
        # Kept out of _modules: the stages below are the registered children (detectron2's names);
        # registering the wrapper too would duplicate every parameter under `stages.`.
        self.__dict__["body"] = backbone
        for name, stage in backbone.stages.items():
            self.add_module(name, stage)
        self._out_features = backbone.out_features
        self._out_feature_strides = {k: s.stride for k, s in backbone.output_shape().items()}
        self._out_feature_channels = {k: s.channels for k, s in backbone.output_shape().items()}

    @classmethod
    def build(cls, *, name: str, **options) -> "ResBackbone":
        """rb.build_backbone(name, **options) wrapped for detectron2 (the callable LazyConfigs use)."""
        return cls(build_backbone(name, **options), arch=name)

    @property
    def stride_in_1x1(self) -> Optional[bool]:
        return getattr(self.body, "stride_in_1x1", None)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResBackbone takes [N, C, H, W] images, got shape {tuple(x.shape)}")
        return self.body(x)

    def train(self, mode: bool = True) -> "ResBackbone":
        super().train(mode)
        self.body.train(mode)  # the wrapped module's own train() re-applies norm_eval
        return self

    def output_shape(self) -> Dict[str, D2ShapeSpec]:
        return {k: D2ShapeSpec(channels=s.channels, stride=s.stride) for k, s in self.body.output_shape().items()}

    @property
    def size_divisibility(self) -> int:
        return self.body.size_divisibility


# -- config ---------------------------------------------------------------------------------------------------
def add_resbackbones_config(cfg: CN) -> CN:
    """Add MODEL.RESBACKBONES (our options) to a detectron2 config; returns cfg. Unset values defer as noted."""
    node = CN()
    node.ARCH = "resnet50"  # any name of rb.list_backbones()
    node.OUT_FEATURES = []  # [] -> FPN builders: MODEL.FPN.IN_FEATURES; C4-style: MODEL.RESNETS.OUT_FEATURES
    #                         for the ResNet families, else the last stage (e.g. conv5 of VGG)
    node.NORM = ""  # "" -> FrozenBN where the arch normalises with BN by default; BN / SyncBN / GN / FrozenBN / none
    node.FREEZE_AT = -1  # -1 -> MODEL.BACKBONE.FREEZE_AT (same meaning: 1 = stem, 2 = stem + res2 / conv1 + conv2)
    node.SHORTCUT = ""  # "" -> the arch's default ("B"); "A" | "B" | "C" (ResNet / plain / CIFAR)
    node.STRIDE_IN_1X1 = None  # None -> the weights' metadata, else False (torchvision layout); True: MSRA/caffe2
    node.RES5_DILATION = 1  # 1 or 2 (DC5), ResNet families
    node.NORM_EVAL = False  # BN layers use running statistics while training (mmdetection's norm_eval)
    node.WEIGHTS = ""  # our backbone/classifier weights (.safetensors / .pth), loaded at build time, checked
    cfg.MODEL.RESBACKBONES = node
    return cfg


def model_conventions(model: torch.nn.Module) -> Conventions:
    """Conventions of a built detectron2 meta-architecture (GeneralizedRCNN, RetinaNet) using our backbone."""
    adapters = [m for m in model.modules() if isinstance(m, ResBackbone)]
    return Conventions(
        input_format=getattr(model, "input_format", None),
        pixel_mean=tuple(model.pixel_mean.flatten().tolist()) if hasattr(model, "pixel_mean") else None,
        pixel_std=tuple(model.pixel_std.flatten().tolist()) if hasattr(model, "pixel_std") else None,
        stride_in_1x1=adapters[0].stride_in_1x1 if adapters else None,
    )


# -- builders -------------------------------------------------------------------------------------------------
def _default(arch: str, option: str):
    param = inspect.signature(get_entry(arch).builder).parameters.get(option)
    return None if param is None else param.default


def backbone_options(cfg: CN, *, out_features: Sequence[str], in_channels: int) -> Dict[str, object]:
    """MODEL.RESBACKBONES (+ MODEL.BACKBONE.FREEZE_AT) -> keyword options of rb.build_backbone(ARCH, ...).

    A key set to a value the arch has no option for raises ValueError naming the key and the arch's options.
    """
    rbc = cfg.MODEL.RESBACKBONES
    arch = rbc.ARCH
    valid = builder_options(arch)  # raises on an unknown arch, listing the available ones
    options: Dict[str, object] = {"out_features": list(out_features), "in_channels": in_channels,
                                  "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT if rbc.FREEZE_AT < 0 else rbc.FREEZE_AT}
    norm = rbc.NORM or ("FrozenBN" if _default(arch, "norm") == "BN" else None)
    stride = configured_stride_in_1x1(cfg)
    wanted = {  # cfg key -> (option, value, is_set)
        "NORM": ("norm", norm, norm is not None),
        "SHORTCUT": ("shortcut", rbc.SHORTCUT, rbc.SHORTCUT != ""),
        "STRIDE_IN_1X1": ("stride_in_1x1", stride, stride is not None),
        "RES5_DILATION": ("res5_dilation", rbc.RES5_DILATION, rbc.RES5_DILATION != 1),
        "NORM_EVAL": ("norm_eval", rbc.NORM_EVAL, bool(rbc.NORM_EVAL)),
    }
    for key, (option, value, is_set) in wanted.items():
        if not is_set:
            continue
        if option not in valid:
            raise ValueError(f"MODEL.RESBACKBONES.{key}={value!r} does not apply to backbone {arch!r}; "
                             f"its options are: {', '.join(valid)}")
        options[option] = value
    return options


def _out_features(cfg: CN, *, fpn: bool) -> List[str]:
    rbc = cfg.MODEL.RESBACKBONES
    if rbc.OUT_FEATURES:
        return list(rbc.OUT_FEATURES)
    if fpn:
        return list(cfg.MODEL.FPN.IN_FEATURES)
    if get_entry(rbc.ARCH).family in RESNET_FAMILIES:
        return list(cfg.MODEL.RESNETS.OUT_FEATURES)
    return [build_backbone(rbc.ARCH).stage_names[-1]]  # a cheap build: its last stage only


def _load_weights(cfg: CN, adapter: ResBackbone) -> None:
    path = cfg.MODEL.RESBACKBONES.WEIGHTS
    if not path:
        return
    state, metadata = load_with_metadata(path)
    refuse_mismatch(conventions_from_metadata(metadata, source=path), cfg_conventions(cfg), source=path)
    recorded = WeightsMetadata.from_dict(metadata)
    recorded_arch = recorded.arch if recorded is not None and recorded.arch != "unknown" else None
    if recorded_arch and recorded_arch != cfg.MODEL.RESBACKBONES.ARCH:
        raise WeightsError(f"{path} holds {recorded_arch!r} weights but MODEL.RESBACKBONES.ARCH is "
                           f"{cfg.MODEL.RESBACKBONES.ARCH!r}")
    names = to_detectron2_names(state, source=path)
    built = set(adapter.body.stage_names)
    # Stages the model does not build (res5 of a C4 backbone) are left out; everything else must match exactly.
    names = {k: v for k, v in names.items() if k.split(".", 1)[0] in built}
    load_state_dict(adapter, names, source=path)
    logger.info("resbackbones: loaded %d tensors from %s into %s", len(names), path, cfg.MODEL.RESBACKBONES.ARCH)


def _build_adapter(cfg: CN, input_shape: D2ShapeSpec, *, fpn: bool) -> ResBackbone:
    options = backbone_options(cfg, out_features=_out_features(cfg, fpn=fpn), in_channels=input_shape.channels)
    adapter = ResBackbone(build_backbone(cfg.MODEL.RESBACKBONES.ARCH, **options), arch=cfg.MODEL.RESBACKBONES.ARCH)
    _load_weights(cfg, adapter)
    return adapter


def _require_config(cfg: CN) -> None:
    if "RESBACKBONES" not in cfg.MODEL:
        raise KeyError("MODEL.RESBACKBONES is missing from the config: call "
                       "resbackbones.integrations.detectron2.add_resbackbones_config(cfg) before merge_from_file")


@BACKBONE_REGISTRY.register()
def build_resbackbones_backbone(cfg: CN, input_shape: D2ShapeSpec) -> ResBackbone:
    """MODEL.RESBACKBONES.ARCH alone, returning OUT_FEATURES (C4 heads: res4; VGG-16 Faster R-CNN: conv5)."""
    _require_config(cfg)
    return _build_adapter(cfg, input_shape, fpn=False)


def _fpn(cfg: CN, bottom_up: ResBackbone, top_block: torch.nn.Module) -> FPN:
    return FPN(bottom_up=bottom_up, in_features=list(cfg.MODEL.FPN.IN_FEATURES),
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=top_block,
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_resbackbones_fpn_backbone(cfg: CN, input_shape: D2ShapeSpec) -> FPN:
    """detectron2's FPN over ours + LastLevelMaxPool: p<log2 stride> levels, p2..p6 for a ResNet (Mask R-CNN)."""
    _require_config(cfg)
    bottom_up = _build_adapter(cfg, input_shape, fpn=True)
    top_block = LastLevelMaxPool()
    # detectron2 pools "p5"; with other strides (VGG conv3..conv5 -> p2..p4, CIFAR) pool the coarsest level.
    top_block.in_feature = _coarsest_level(bottom_up, cfg.MODEL.FPN.IN_FEATURES)
    return _fpn(cfg, bottom_up, top_block)


def _coarsest_level(bottom_up: ResBackbone, in_features: Sequence[str]) -> str:
    stride = bottom_up.output_shape()[list(in_features)[-1]].stride
    return f"p{int(math.log2(stride))}"


@BACKBONE_REGISTRY.register()
def build_resbackbones_retinanet_fpn_backbone(cfg: CN, input_shape: D2ShapeSpec) -> FPN:
    """detectron2's FPN + LastLevelP6P7 fed by the last bottom-up feature (res5 for a ResNet): p3..p7 (RetinaNet)."""
    _require_config(cfg)
    bottom_up = _build_adapter(cfg, input_shape, fpn=True)
    last = list(cfg.MODEL.FPN.IN_FEATURES)[-1]
    channels = bottom_up.output_shape()[last].channels
    return _fpn(cfg, bottom_up, LastLevelP6P7(channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature=last))


def build_adapter(*, name: str, **options) -> ResBackbone:
    """ResBackbone(rb.build_backbone(name, **options)): the target LazyConfigs call (module-level, so configs that
    go through LazyConfig.save name it as resbackbones.integrations.detectron2.build_adapter)."""
    return ResBackbone.build(name=name, **options)


def _last_level_max_pool(*, in_feature: str = "p5") -> LastLevelMaxPool:
    block = LastLevelMaxPool()
    block.in_feature = in_feature
    return block


def lazy_fpn_backbone(*, name: str, out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                      out_channels: int = 256, norm: str = "", top_block: str = "maxpool",
                      top_in_feature: str = "p5", p6p7_in_channels: Optional[int] = None,
                      backbone_norm: Optional[str] = None, **options):
    """LazyConfig node: L(FPN)(bottom_up=L(build_adapter)(name=..., ...), in_features=out_features, ...).

    norm: the FPN's norm ("" = none, detectron2's default); backbone_norm: ours (e.g. "FrozenBN").
    top_block "maxpool" (Faster / Mask R-CNN) pools top_in_feature: "p5" for a ResNet, "p4" for VGG conv3..conv5.
    top_block "p6p7" (RetinaNet) runs on the last bottom-up feature, whose channels p6p7_in_channels must give.
    Other options go to rb.build_backbone (freeze_at, stride_in_1x1, ...).
    """
    if backbone_norm is not None:
        options["norm"] = backbone_norm
    if top_block == "maxpool":
        top = L(_last_level_max_pool)(in_feature=top_in_feature)
    elif top_block == "p6p7":
        if p6p7_in_channels is None:
            raise ValueError("lazy_fpn_backbone(top_block='p6p7') needs p6p7_in_channels (channels of the last feature)")
        top = L(LastLevelP6P7)(in_channels=p6p7_in_channels, out_channels=out_channels, in_feature=out_features[-1])
    else:
        raise ValueError(f"unknown top_block {top_block!r}; available: maxpool, p6p7")
    return L(FPN)(
        bottom_up=L(build_adapter)(name=name, out_features=list(out_features), **options),
        in_features=list(out_features), out_channels=out_channels, norm=norm, top_block=top,
    )


# -- weights --------------------------------------------------------------------------------------------------
def _our_adapter(model: torch.nn.Module) -> ResBackbone:
    adapters = [m for m in model.modules() if isinstance(m, ResBackbone)]
    if len(adapters) != 1:
        raise ValueError(f"expected one resbackbones backbone in the model, found {len(adapters)}")
    return adapters[0]


def export_backbone_weights(model: torch.nn.Module, path: str, *, arch: Optional[str] = None) -> str:
    """Save the backbone of a detectron2 model using ours as our weight file (names `stages.*`), with metadata
    recording the model's input_format, pixel mean/std and stride_in_1x1 so it cannot be mixed up later."""
    adapter = _our_adapter(model)
    state = from_detectron2_names(adapter.state_dict(), stage_names=adapter.body.stage_names)
    arch = arch or getattr(adapter, "arch", None) or "unknown"
    metadata = conventions_to_metadata(model_conventions(model), arch=arch, source="detectron2")
    save(state, path, metadata=metadata)
    return str(path)


def save_for_detectron2(weights_path: str, out_path: str) -> str:
    """Rewrite our weight file as a detectron2 checkpoint (.pth) any DetectionCheckpointer loads as MODEL.WEIGHTS:
    {"model": {res2.0.conv1.weight: ...}, "matching_heuristics": True, "resbackbones_metadata": {...}}.

    matching_heuristics lets detectron2 place the names under backbone.bottom_up. (FPN), backbone. (C4) and
    roi_heads.res5 (C4 heads), as it does for its own ImageNet .pkl files. Plain DetectionCheckpointer does not
    check conventions: ResBackbonesCheckpointer does.
    """
    state, metadata = load_with_metadata(weights_path)
    names = {k: v.contiguous() for k, v in to_detectron2_names(state, source=weights_path).items()}
    save_torch_atomic({"model": names, "__author__": "resbackbones", "matching_heuristics": True,
                       "resbackbones_metadata": dict(metadata)}, out_path)
    return str(out_path)


class ResBackbonesCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads and writes through the library's rules: every file is loaded by our reader
    (torch files: weights.io.torch_load_refusing_code, record CRCs checked, pickled code refused; detectron2 / caffe2
    .pkl: numpy arrays only; .safetensors and our .pth with metadata: converted names), every checkpoint and the
    last_checkpoint tag are written atomically (io.outputs), and a checkpoint whose recorded conventions
    (input_format, pixel mean/std, stride_in_1x1) differ from the model's is refused.

    Why override detectron2's loader rather than wrap it: fvcore's _load_file is a bare torch.load (no CRC check)
    and detectron2's .pkl branch is pickle.load, which runs whatever code the file names."""

    def _load_file(self, filename: str):
        if filename.endswith(".safetensors"):
            state, metadata = load_with_metadata(filename)
            return self._ours(state, metadata, filename)
        if filename.endswith(".pkl"):
            return self._model_zoo_pickle(filename)
        loaded = super()._load_file(filename)
        if isinstance(loaded.get("model"), dict) and "state_dict" in loaded["model"] and "metadata" in loaded["model"]:
            return self._ours(loaded["model"]["state_dict"], loaded["model"]["metadata"], filename)
        return loaded

    def _torch_load(self, f: str):
        from ..weights.io import torch_load_refusing_code

        loaded = torch_load_refusing_code(f, file_kind="checkpoint", what="checkpoint ")
        if not isinstance(loaded, dict):
            raise WeightsError(f"checkpoint {f} holds a {type(loaded).__name__}, not a dict of tensors")
        return loaded

    @staticmethod
    def _model_zoo_pickle(filename: str):
        """detectron2's .pkl rules (detection_checkpoint.py), on a numpy-only unpickler."""
        from ..weights.convert_detectron2 import read_pickle

        data = read_pickle(filename)
        if not isinstance(data, dict):
            raise WeightsError(f"{filename} holds a {type(data).__name__}, not a detectron2 / caffe2 model dict")
        if "model" in data and "__author__" in data:
            return data
        if "blobs" in data:  # detection models have "blobs", ImageNet models do not
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save, written atomically (a kill mid-save leaves the previous file, never a torn one)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        save_torch_atomic(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self.save_to_disk:
            write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    @staticmethod
    def _ours(state, metadata, filename):
        if any(k.startswith(("stages.", "backbone.stages.")) for k in state):
            state = to_detectron2_names(state, source=filename)
        return {"model": dict(state), "__author__": "resbackbones", "matching_heuristics": True,
                "resbackbones_metadata": dict(metadata)}

    def _load_model(self, checkpoint):
        metadata = checkpoint.pop("resbackbones_metadata", None)
        if metadata:
            refuse_mismatch(conventions_from_metadata(metadata), model_conventions(self.model), source="checkpoint")
        return super()._load_model(checkpoint)
