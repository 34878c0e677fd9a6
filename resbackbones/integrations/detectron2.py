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
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec as D2ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ..backbones import build_backbone
from ..backbones.registry import builder_options, get_entry
from ..weights import WeightsError, load_state_dict, load_with_metadata
from ..weights.metadata import WeightsMetadata
from .detectron2_adapter import ResBackbone, model_conventions
from .detectron2_checkpoint import ResBackbonesCheckpointer, export_backbone_weights, save_for_detectron2
from .detectron2_conventions import (
    RESNET_FAMILIES,
    apply_weights_conventions,
    cfg_conventions,
    configured_stride_in_1x1,
    refuse_mismatch,
)
from .detectron2_weights import conventions_from_metadata, to_detectron2_names

logger = logging.getLogger(__name__)

__all__ = [
    "ResBackbone", "ResBackbonesCheckpointer", "add_resbackbones_config", "apply_weights_conventions",
    "backbone_options", "build_adapter", "build_resbackbones_backbone", "build_resbackbones_fpn_backbone",
    "build_resbackbones_retinanet_fpn_backbone", "cfg_conventions", "export_backbone_weights", "lazy_fpn_backbone",
    "model_conventions", "save_for_detectron2",
]

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
