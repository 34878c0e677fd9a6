"""Assemble torchvision's FasterRCNN / MaskRCNN from a feature producer and heads (keyword-only, no config)."""
from typing import Any, Mapping, Optional, Sequence

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from .fp32_outputs import FP32AnchorGenerator, FP32BoxPredictor, FP32OutputMaskPredictor, FP32OutputRPNHead

RPN_OPTIONS = ("pre_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_train", "post_nms_top_n_test",
               "nms_thresh", "fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction",
               "score_thresh")
ROI_OPTIONS = ("score_thresh", "nms_thresh", "detections_per_img", "fg_iou_thresh", "bg_iou_thresh",
               "batch_size_per_image", "positive_fraction", "bbox_reg_weights")


def anchor_generator(*, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[float],
                     num_levels: int) -> AnchorGenerator:
    """One anchor size tuple per feature level, the same aspect ratios (h / w) at every level; float32 anchors
    under autocast (fp32_outputs.py)."""
    sizes = tuple(tuple(int(s) for s in level) for level in sizes)
    if len(sizes) != num_levels:
        raise ValueError(
            f"anchors: {len(sizes)} size levels {[list(s) for s in sizes]} for {num_levels} feature maps; give one "
            f"tuple of sizes per level the RPN sees"
        )
    if len({len(level) for level in sizes}) != 1:
        raise ValueError(f"anchors: every level needs the same number of sizes (one shared RPN head), got {sizes}")
    return FP32AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * len(sizes))


def assemble_rcnn(
    *,
    features: nn.Module,
    num_classes: int,
    anchors: AnchorGenerator,
    box_roi_pool: MultiScaleRoIAlign,
    box_head: nn.Module,
    box_head_dim: int,
    transform: nn.Module,
    rpn: Mapping[str, Any],
    roi_heads: Mapping[str, Any],
    mask_roi_pool: Optional[MultiScaleRoIAlign] = None,
    mask_head: Optional[nn.Module] = None,
    mask_head_dim: int = 256,
    mask_dim_reduced: int = 256,
) -> FasterRCNN:
    """Faster R-CNN (mask_head None) or Mask R-CNN with torchvision's RPN, RoIHeads and predictors (the RPN head and
    predictors hand float32 to the box maths under autocast: fp32_outputs.py).

    features: images [N, 3, H, W] -> {name: [N, C, h, w]} with attribute out_channels (C, same at every level).
    num_classes: object classes; the predictors get num_classes + 1 outputs (index 0 = background).
    rpn / roi_heads: options named as in RPN_OPTIONS / ROI_OPTIONS (torchvision's rpn_* / box_* arguments).
    forward (torchvision's): train (images list[[3, H, W]], targets) -> losses dict; eval -> list of
    {"boxes": [K, 4] xyxy input pixels, "labels": [K], "scores": [K], ("masks": [K, 1, H, W] in [0, 1])}.
    """
    unknown = sorted(set(rpn) - set(RPN_OPTIONS)) + sorted(set(roi_heads) - set(ROI_OPTIONS))
    if unknown:
        raise ValueError(f"assemble_rcnn: unknown rpn/roi_heads options {unknown}")
    kwargs = dict(
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=FP32OutputRPNHead(features.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=FP32BoxPredictor(box_head_dim, num_classes + 1),
        **{f"rpn_{k}": v for k, v in rpn.items()},
        **{f"box_{k}" if k != "bbox_reg_weights" else k: v for k, v in roi_heads.items()},
    )
    if mask_head is None:
        model = FasterRCNN(features, **kwargs)
    else:
        predictor = FP32OutputMaskPredictor(mask_head_dim, mask_dim_reduced, num_classes + 1)
        model = MaskRCNN(features, mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=predictor, **kwargs)
    model.transform = transform
    return model
