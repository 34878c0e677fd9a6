"""Typed schema of a detection MODEL (the `model:` section of a training config), read by build_detector.

Defaults are torchvision's fasterrcnn_resnet50_fpn / Detectron's R50-FPN 1x settings. Units: pixels of the
resized network input; image_mean/std in [0, 1] units of RGB (or BGR, see `input.format`) images in [0, 1],
taken from the backbone weights' metadata unless set.

    from resbackbones.config import load_config
    cfg = load_config(DetectorConfig, "model.yaml", overrides=["roi_heads.batch_size_per_image=128"])
    det = rb.build_detector(cfg)
"""
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Literal, Optional, Tuple

LAYOUTS = ("fpn", "c4", "single")


# Upper bounds of the architecture's sizes: far above any real detector, low enough that a typo (an extra digit, a
# 2**63) is refused by name at load instead of asking for terabytes when the model is built (found by the fuzzer).
MAX_CHANNELS = 65536  # fc / conv / FPN widths
MAX_LAYERS = 64  # convs in a head
MAX_POOLER = 256  # RoI pooler output side and sampling points
MAX_PIXELS = 16384  # image sides, anchor sizes
MIN_PIXELS = 32  # a resized side below the backbone's stride leaves no feature map (max_size=1 crashed in resize)
MAX_COUNT = 1000000  # proposals, samples per image, detections, classes


@dataclass
class BackboneConfig:
    """Which registered backbone, how it is built, and which weights it starts from.

    weights: "" (random init), "torchvision:<ENUM>" (e.g. torchvision:IMAGENET1K_V1, torchvision:DEFAULT: the file
      in torchvision's cache under $TORCH_HOME, downloaded unless RESBACKBONES_OFFLINE=1), or a file: a
      tools/train_cls.py --export or checkpoint, our .safetensors, a torchvision .pth, a detectron2 .pkl (see
      rb.weights.resolve_weights). Its metadata sets model.input's normalisation and channel order.
    options: extra keyword options for the backbone builder (e.g. {stride_in_1x1: true, res5_dilation: 2}).
    """

    RANGES: ClassVar[Dict[str, str]] = {"freeze_at": "[0, 5]"}  # numeric ranges (config/ranges.py)
    name: str = "resnet50"
    norm: str = "FrozenBN"
    freeze_at: int = 2
    out_features: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
    weights: str = ""
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FPNConfig:
    """FPN over backbone.out_features (layout "fpn" only). top_block: maxpool (P6 for the RPN) | p6p7 | p6p7_c5 | none."""

    RANGES: ClassVar[Dict[str, str]] = {"out_channels": f"[1, {MAX_CHANNELS}]"}
    out_channels: int = 256
    top_block: Literal["maxpool", "p6p7", "p6p7_c5", "none"] = "maxpool"
    norm: str = ""


@dataclass
class AnchorConfig:
    """sizes: one tuple per feature level the RPN sees (FPN: P2..P6 -> 5 levels; c4/single: 1 level).

    aspect_ratios (h / w) are shared by every level. The VGG-16 paper setting is sizes [[128, 256, 512]].
    """

    RANGES: ClassVar[Dict[str, str]] = {"sizes": f"[1, {MAX_PIXELS}]", "aspect_ratios": "(0, 1000]"}
    sizes: Tuple[Tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass
class RPNConfig:
    """Region proposal network: top-n are per feature level before NMS, per image after it."""

    RANGES: ClassVar[Dict[str, str]] = {
        "pre_nms_top_n_train": f"[1, {MAX_COUNT}]", "pre_nms_top_n_test": f"[1, {MAX_COUNT}]",
        "post_nms_top_n_train": f"[1, {MAX_COUNT}]", "post_nms_top_n_test": f"[1, {MAX_COUNT}]", "nms_thresh": "(0, 1]",
        "fg_iou_thresh": "(0, 1]", "bg_iou_thresh": "[0, 1]", "batch_size_per_image": f"[1, {MAX_COUNT}]",
        "positive_fraction": "(0, 1]",
        "score_thresh": "[0, 1]"}
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0


@dataclass
class RoIHeadsConfig:
    """Proposal sampling for the box head, RoI pooling and test-time post-processing."""

    RANGES: ClassVar[Dict[str, str]] = {
        "batch_size_per_image": f"[1, {MAX_COUNT}]", "positive_fraction": "(0, 1]", "fg_iou_thresh": "(0, 1]",
        "bg_iou_thresh": "[0, 1]", "pooler_resolution": f"[1, {MAX_POOLER}]", "sampling_ratio": f"[0, {MAX_POOLER}]",
        "bbox_reg_weights": "(0, 1000]", "score_thresh": "[0, 1]", "nms_thresh": "(0, 1]",
        "detections_per_img": f"[1, {MAX_COUNT}]"}
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    pooler_type: Literal["RoIAlign", "RoIPool"] = "RoIAlign"
    pooler_resolution: int = 7  # c4 layout: 14 (res5 then halves it to 7)
    sampling_ratio: int = 2
    bbox_reg_weights: Optional[Tuple[float, float, float, float]] = None  # None: (10, 10, 5, 5)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100


@dataclass
class BoxHeadConfig:
    """type: mlp (two fc layers of fc_dim: FPN's 2fc, VGG's fc6/fc7) | conv_fc (num_conv convs of conv_dim, then
    one fc of fc_dim; torchvision's v2 head) | res5 (c4 layout: the backbone's res5 stage + average pool)."""

    RANGES: ClassVar[Dict[str, str]] = {"fc_dim": f"[1, {MAX_CHANNELS}]", "num_conv": f"[0, {MAX_LAYERS}]",
                                        "conv_dim": f"[1, {MAX_CHANNELS}]"}
    type: Literal["mlp", "conv_fc", "res5"] = "mlp"
    fc_dim: int = 1024
    num_conv: int = 4
    conv_dim: int = 256
    norm: str = ""


@dataclass
class MaskHeadConfig:
    """Mask branch (Mask R-CNN) when enabled: num_conv 3x3 convs of conv_dim on a pooled RoI, deconv, 1x1 per class."""

    RANGES: ClassVar[Dict[str, str]] = {
        "num_conv": f"[0, {MAX_LAYERS}]", "conv_dim": f"[1, {MAX_CHANNELS}]", "pooler_resolution": f"[1, {MAX_POOLER}]",
        "sampling_ratio": f"[0, {MAX_POOLER}]"}
    enabled: bool = False
    num_conv: int = 4
    conv_dim: int = 256
    pooler_resolution: int = 14
    sampling_ratio: int = 2
    norm: str = ""


@dataclass
class InputConfig:
    """Resizing and normalisation done inside the model (torchvision's GeneralizedRCNNTransform).

    min_size: one size, or several to draw from per batch during training (multi-scale). Images given to the model
    are float [3, H, W] RGB in [0, 1]; `format` BGR flips them before normalising. image_mean/std ([0, 1] units,
    `format` order) and format: null (the default) = the convention the backbone weights record (torchvision
    ImageNet: RGB mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); detectron2/caffe2 MSRA: BGR, mean
    (103.53, 116.28, 123.675) / 255, std (1 / 255,) * 3; a tools/train_cls.py export: its training mean/std), else
    ImageNet RGB. A value set here that conflicts with the weights is refused naming both.
    """

    RANGES: ClassVar[Dict[str, str]] = {
        "min_size": f"[{MIN_PIXELS}, {MAX_PIXELS}]", "max_size": f"[{MIN_PIXELS}, {MAX_PIXELS}]", "image_mean": "[0, 1]",
        "image_std": "(0, inf)", "size_divisibility": "[1, 1024]"}
    RENAMED: ClassVar[Dict[str, str]] = {"channels_last": "model.channels_last"}  # one place for both tasks
    min_size: Tuple[int, ...] = (800,)
    max_size: int = 1333
    image_mean: Optional[Tuple[float, float, float]] = None
    image_std: Optional[Tuple[float, float, float]] = None
    format: Optional[Literal["RGB", "BGR"]] = None
    size_divisibility: int = 32


@dataclass
class DetectorConfig:
    """A whole detector. num_classes counts object classes only: labels are 1..num_classes, 0 is background
    (torchvision's convention; COCO = 80). layout: fpn (backbone + FPN, multi-level RoIAlign) | c4 (RPN + RoI
    pooling on res4, res5 as box head; He et al. 2016) | single (one feature map, e.g. VGG-16 conv5_3)."""

    RANGES: ClassVar[Dict[str, str]] = {"num_classes": f"[1, {MAX_COUNT}]"}
    layout: Literal["fpn", "c4", "single"] = "fpn"
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    channels_last: bool = True  # NHWC batch: faster conv kernels on CPU and CUDA, same values up to rounding

    def validate(self) -> None:
        """Cross-field checks; raises ValueError naming the keys (load_config turns it into a ConfigError)."""
        if self.layout == "c4" and self.box_head.type != "res5":
            raise ValueError(f"model.layout 'c4' needs model.box_head.type 'res5', got {self.box_head.type!r}")
        if self.layout != "c4" and self.box_head.type == "res5":
            raise ValueError(f"model.box_head.type 'res5' needs model.layout 'c4', got {self.layout!r}")
        if self.layout != "fpn" and len(self.anchors.sizes) != 1:
            raise ValueError(
                f"model.anchors.sizes must hold one level for layout {self.layout!r} (one feature map), got "
                f"{len(self.anchors.sizes)}: {[list(s) for s in self.anchors.sizes]}"
            )
        for key, value in (("input.min_size", self.input.min_size), ("anchors.aspect_ratios", self.anchors.aspect_ratios),
                           ("anchors.sizes", self.anchors.sizes), ("backbone.out_features", self.backbone.out_features)):
            if not value or (key == "anchors.sizes" and not all(value)):  # an empty list builds 0-channel layers
                raise ValueError(f"model.{key} must name at least one value (per level), got {_plain_list(value)}")
        for section in ("rpn", "roi_heads"):  # torchvision's Matcher asserts this deep in the build otherwise
            part = getattr(self, section)
            if part.bg_iou_thresh > part.fg_iou_thresh:
                raise ValueError(f"model.{section}.bg_iou_thresh ({part.bg_iou_thresh}) must not exceed "
                                 f"model.{section}.fg_iou_thresh ({part.fg_iou_thresh})")
        for name in ("positive_fraction",):
            for section in ("rpn", "roi_heads"):
                value = getattr(getattr(self, section), name)
                if not 0.0 < value <= 1.0:
                    raise ValueError(f"model.{section}.{name} must be in (0, 1], got {value}")


def c4_defaults(name: str = "resnet50") -> DetectorConfig:
    """The paper's C4 layout (He et al. 2016 / Detectron C4): RPN and 14x14 RoIAlign on res4, res5 box head."""
    return DetectorConfig(
        layout="c4",
        backbone=BackboneConfig(name=name, out_features=("res4",)),
        anchors=AnchorConfig(sizes=((32, 64, 128, 256, 512),)),
        rpn=RPNConfig(pre_nms_top_n_train=12000, pre_nms_top_n_test=6000, post_nms_top_n_test=1000),
        roi_heads=RoIHeadsConfig(pooler_resolution=14, sampling_ratio=0),
        box_head=BoxHeadConfig(type="res5"),
    )


def vgg16_defaults() -> DetectorConfig:
    """Ren et al. 2015's VGG-16 Faster R-CNN: conv5_3 (stride 16), anchors 3 scales x 3 ratios, RoIPool 7x7, fc6/fc7."""
    return DetectorConfig(
        layout="single",
        backbone=BackboneConfig(name="vgg16", norm="none", freeze_at=2, out_features=("conv5",)),
        anchors=AnchorConfig(sizes=((128, 256, 512),)),
        rpn=RPNConfig(pre_nms_top_n_train=12000, pre_nms_top_n_test=6000, post_nms_top_n_test=300),
        roi_heads=RoIHeadsConfig(pooler_type="RoIPool", pooler_resolution=7, batch_size_per_image=128),
        box_head=BoxHeadConfig(type="mlp", fc_dim=4096),
        input=InputConfig(min_size=(600,), max_size=1000),
    )


def _plain_list(value):
    return [_plain_list(v) for v in value] if isinstance(value, (list, tuple)) else value
