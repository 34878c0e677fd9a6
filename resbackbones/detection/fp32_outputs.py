"""torchvision's anchor generator, RPN head and predictors, with float32 where they hand over to box maths.

Under autocast (bf16 on CPU / Ampere+, fp16 on older GPUs) torchvision's R-CNN keeps every tensor in the dtype of the
features: anchors, objectness and box deltas, proposals, the decoded boxes, NMS and the box / mask losses would all
run in bf16. bf16 keeps 8 significant bits, so a 500-pixel coordinate is stored to the nearest 2 pixels (anchors,
proposals and final boxes alike) and a loss summed over hundreds of RoIs loses its low digits. These subclasses keep
the convolutions of the heads in the autocast dtype (that is where the time goes) and switch to float32 where the
heads' outputs leave them:

- FP32AnchorGenerator: anchors in float32 whatever the features' dtype (float64 stays float64).
- FP32OutputRPNHead: the 3x3 conv and the 1x1 predictions run under autocast; objectness and deltas are returned
  as float32 (proposal decoding, top-k, NMS and the RPN losses then run in float32, as in detectron2).
- FP32BoxPredictor: the final class / box-delta linear layers run in float32 (autocast off): the deltas become the
  reported boxes directly, and the layers are ~3 % of the MLP box head's multiply-adds.
- FP32OutputMaskPredictor: mask logits returned as float32 (the mask loss and the pasted masks in float32).

Parameter names and shapes are torchvision's (subclasses), so torchvision / detectron2-converted state dicts load.
Without autocast, in float32 or float64, every output equals torchvision's.
"""
from typing import List, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

_REDUCED = (torch.bfloat16, torch.float16)


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """bf16 / fp16 -> float32; float32 and float64 unchanged."""
    return torch.float32 if dtype in _REDUCED else dtype


def _widen(t: Tensor) -> Tensor:
    return t.to(at_least_float32(t.dtype))


class FP32AnchorGenerator(AnchorGenerator):
    """AnchorGenerator whose anchors ([sum_l H_l * W_l * A, 4] xyxy input pixels per image) are float32 even when
    the feature maps are bf16 / fp16 (torchvision takes the features' dtype)."""

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        super().set_cell_anchors(at_least_float32(dtype), device)


class FP32OutputRPNHead(RPNHead):
    """RPNHead: features [N, C, H_l, W_l] per level -> (objectness [N, A, H_l, W_l], deltas [N, 4A, H_l, W_l]) per
    level, returned in at least float32."""

    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, bbox_reg = super().forward(x)
        return [_widen(t) for t in logits], [_widen(t) for t in bbox_reg]


class FP32BoxPredictor(FastRCNNPredictor):
    """FastRCNNPredictor run in (at least) float32: box features [R, D] -> (class logits [R, K + 1],
    box deltas [R, 4 (K + 1)])."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            scores, deltas = super().forward(x.to(self.cls_score.weight.dtype))
        return _widen(scores), _widen(deltas)


class FP32OutputMaskPredictor(MaskRCNNPredictor):
    """MaskRCNNPredictor: mask features [R, C, 14, 14] -> mask logits [R, K + 1, 28, 28] in at least float32."""

    def forward(self, x: Tensor) -> Tensor:
        return _widen(super().forward(x))
