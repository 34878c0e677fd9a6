"""build_detector(cfg): the one place where a DetectorConfig becomes keyword arguments of the module builders."""
import dataclasses
from typing import Any, Mapping, Union

from torchvision.models.detection import FasterRCNN

from ..backbones import build_backbone
from ..config.detector import DetectorConfig
from ..necks import FPN, BackboneWithFPN
from ..weights import weights_metadata
from ..weights.conventions import input_conventions
from .c4 import split_res5
from .heads import Res5Head, box_head, mask_head, roi_pooler
from .rcnn import anchor_generator, assemble_rcnn
from .single import SingleFeature
from .transform import DetectionTransform


def _as_config(cfg: Union[DetectorConfig, Mapping[str, Any], Any]) -> DetectorConfig:
    if isinstance(cfg, DetectorConfig):
        cfg.validate()
        return cfg
    if isinstance(getattr(cfg, "model", None), DetectorConfig):  # a full training config
        return _as_config(cfg.model)
    if isinstance(cfg, Mapping):
        from ..config import from_dict

        return from_dict(DetectorConfig, cfg, source="model")
    raise TypeError(f"build_detector expects a DetectorConfig (or a mapping of its fields), got {type(cfg).__name__}")


def build_detector(cfg: Union[DetectorConfig, Mapping[str, Any]]) -> FasterRCNN:
    """Faster R-CNN or Mask R-CNN (cfg.mask_head.enabled) from cfg.backbone + layout (fpn | c4 | single).

    Returns torchvision's FasterRCNN / MaskRCNN (torchvision's forward contract: images list of float [3, H, W] in
    [0, 1]; training also takes targets [{"boxes": [K, 4] xyxy, "labels": [K] in 1..num_classes, "masks": [K, H, W]}]
    and returns a loss dict; eval returns [{"boxes", "labels", "scores", ("masks" [K, 1, H, W])}] in input pixels).
    Parameter names: backbone.body.stages.* (our backbone), backbone.fpn.* / rpn.* / roi_heads.* (torchvision's).
    """
    cfg = _as_config(cfg)
    bcfg, layout = cfg.backbone, cfg.layout
    out_features = tuple(bcfg.out_features)
    if layout == "c4":
        if out_features not in (("res4",), ("res4", "res5")):
            raise ValueError(f"model.layout 'c4' uses res4 features: set model.backbone.out_features to ['res4'], "
                             f"got {list(out_features)}")
        out_features = ("res4", "res5")  # build res5 too: it becomes the box head after the weights are loaded
    elif layout == "single" and len(out_features) != 1:
        raise ValueError(f"model.layout 'single' needs exactly one model.backbone.out_features, got {list(out_features)}")
    backbone = build_backbone(bcfg.name, out_features=out_features, norm=bcfg.norm, freeze_at=bcfg.freeze_at,
                              weights=bcfg.weights or None, **dict(bcfg.options))
    icfg = cfg.input
    image_mean, image_std, input_format = input_conventions(icfg, weights_metadata(backbone), source=bcfg.weights)

    res5, res5_channels = None, 0
    if layout == "fpn":
        fpn = FPN(input_shapes=backbone.output_shape(), in_features=out_features, out_channels=cfg.fpn.out_channels,
                  top_block=cfg.fpn.top_block, norm=cfg.fpn.norm)
        features = BackboneWithFPN(backbone=backbone, fpn=fpn)
        shapes = fpn.output_shape()
        pooled = list(shapes)[: len(out_features)]  # RoIs pool from P2..P5, never from the top block's levels
    elif layout == "c4":
        features, res5, res5_channels = split_res5(backbone)
        shapes = features.output_shape()
        pooled = list(shapes)
    else:
        features = SingleFeature(backbone=backbone, feature=out_features[0])
        shapes = features.output_shape()
        pooled = list(shapes)
    strides = [shapes[name].stride for name in pooled]

    rcfg, hcfg, mcfg = cfg.roi_heads, cfg.box_head, cfg.mask_head
    box_pool = roi_pooler(pooler_type=rcfg.pooler_type, featmap_names=pooled, strides=strides,
                          output_size=rcfg.pooler_resolution, sampling_ratio=rcfg.sampling_ratio)
    head, head_dim = box_head(head_type=hcfg.type, in_channels=features.out_channels,
                              resolution=rcfg.pooler_resolution, fc_dim=hcfg.fc_dim, num_conv=hcfg.num_conv,
                              conv_dim=hcfg.conv_dim, norm=hcfg.norm, res5=res5, res5_channels=res5_channels)
    mask_kwargs = {}
    if mcfg.enabled:
        mask_pool = roi_pooler(pooler_type="RoIAlign", featmap_names=pooled, strides=strides,
                               output_size=mcfg.pooler_resolution, sampling_ratio=mcfg.sampling_ratio)
        if layout == "c4":
            # detectron2's C4 mask branch: the box head's res5 (shared weights) on 14x14 RoIs -> 7x7 -> 14x14 masks.
            m_head, m_dim, reduced = Res5Head(res5=res5, out_channels=res5_channels, pool=False), res5_channels, 256
        else:
            m_head, m_dim = mask_head(in_channels=features.out_channels, num_conv=mcfg.num_conv,
                                      conv_dim=mcfg.conv_dim, norm=mcfg.norm)
            reduced = mcfg.conv_dim
        mask_kwargs = dict(mask_roi_pool=mask_pool, mask_head=m_head, mask_head_dim=m_dim, mask_dim_reduced=reduced)

    transform = DetectionTransform(min_size=tuple(icfg.min_size), max_size=icfg.max_size, image_mean=image_mean,
                                   image_std=image_std, input_format=input_format,
                                   size_divisible=icfg.size_divisibility, channels_last=cfg.channels_last)
    rpn_opts = dataclasses.asdict(cfg.rpn)
    roi_opts = {k: v for k, v in dataclasses.asdict(rcfg).items()
                if k not in ("pooler_type", "pooler_resolution", "sampling_ratio")}
    if roi_opts["bbox_reg_weights"] is not None:
        roi_opts["bbox_reg_weights"] = tuple(roi_opts["bbox_reg_weights"])
    return assemble_rcnn(
        features=features, num_classes=cfg.num_classes,
        anchors=anchor_generator(sizes=cfg.anchors.sizes, aspect_ratios=cfg.anchors.aspect_ratios,
                                 num_levels=len(shapes)),
        box_roi_pool=box_pool, box_head=head, box_head_dim=head_dim, transform=transform,
        rpn=rpn_opts, roi_heads=roi_opts, **mask_kwargs,
    )
