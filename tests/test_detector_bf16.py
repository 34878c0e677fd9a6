"""Mask R-CNN (FPN, R50's heads over a ResNet-18 to save time) under bf16 autocast, what train.amp=auto picks on CPUs
with native bf16, on real COCO images: the convolutions run in bf16, anchors / proposals / box decoding / NMS / losses
in float32 (resbackbones/detection/fp32_outputs.py), and losses and detections match the float32 model.

The random-init model is made well-conditioned first (zero_init_residual: every residual block starts as the identity;
BN statistics of the batch): a random deep ResNet amplifies any perturbation, bf16 rounding included, layer after
layer (with plain random init the two runs' detections differ however the heads are handled), while trained weights
do not. Measured on this model: losses agree to <= 0.1 %; over seeds 0-5, 8-10 of the top-10 float32 detections of
each image have a bf16 twin (same label, median IoU >= 0.993); for the same proposals the decoded boxes agree to
~0.08 px, where decoding the same deltas in bf16 (torchvision's behaviour under autocast) is off by ~3.6 px.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

import resbackbones as rb
from resbackbones.data.coco import CocoDetection
from resbackbones.detection import DetectorConfig

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "coco_sample"
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _coco_batch(n=2):
    ds = CocoDetection(SAMPLE / "annotations.json", SAMPLE / "images", with_masks=True)
    images, targets = [], []
    for index in range(len(ds)):
        image, target = ds[index]
        if len(target["boxes"]):
            images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255)
            targets.append({"boxes": torch.as_tensor(target["boxes"], dtype=torch.float32),
                            "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
                            "masks": torch.as_tensor(target["masks"], dtype=torch.uint8)})
        if len(images) == n:
            return images, targets
    raise AssertionError("COCO sample has too few annotated images")


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    cfg = DetectorConfig(num_classes=80)
    cfg.mask_head.enabled = True
    cfg.backbone.name, cfg.backbone.norm, cfg.backbone.freeze_at = "resnet18", "BN", 0  # R50's heads, less time
    cfg.backbone.options = {"zero_init_residual": True}
    # Network coordinates reach 384 px: above 256 px bf16 stores only every 2nd pixel.
    cfg.input.min_size, cfg.input.max_size = (256,), 384
    cfg.rpn.pre_nms_top_n_train = cfg.rpn.pre_nms_top_n_test = 300
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = 64
    cfg.roi_heads.batch_size_per_image = 32
    cfg.roi_heads.score_thresh, cfg.roi_heads.detections_per_img = 0.0, 20
    model = rb.build_detector(cfg)
    images, targets = _coco_batch()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = 1.0  # running statistics := this batch's
    model.train()
    with torch.no_grad():
        model.backbone(model.transform(images)[0].tensors)
    for bn in norms:
        bn.momentum = 0.1
    return model, images, targets


def _record_dtypes(model):
    """Forward hooks noting the dtype of each named module's (first) output tensor."""
    seen, handles = {}, []

    def first_tensor(out):
        while not torch.is_tensor(out):
            out = next(iter(out.values())) if isinstance(out, dict) else out[0]
        return out

    for name in ("backbone", "rpn.anchor_generator", "rpn.head", "roi_heads.box_predictor",
                 "roi_heads.mask_predictor"):
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, first_tensor(out).dtype)))
    return seen, handles


def _losses(model, images, targets, autocast):
    torch.manual_seed(123)  # the RPN / RoI samplers draw random subsets
    with torch.autocast(**BF16, enabled=autocast):
        return model(images, targets)


def test_train_step_under_bf16_autocast_has_float32_box_maths_and_close_losses(model_and_data):
    model, images, targets = model_and_data
    model.train()
    with torch.no_grad():
        reference = _losses(model, images, targets, autocast=False)
    seen, handles = _record_dtypes(model)
    losses = _losses(model, images, targets, autocast=True)
    for handle in handles:
        handle.remove()
    assert seen.pop("backbone") == torch.bfloat16, "autocast did not reach the backbone"
    assert all(dtype == torch.float32 for dtype in seen.values()), seen
    for key, value in losses.items():
        assert value.dtype == torch.float32 and math.isfinite(value.item()), (key, value)
        # RPN losses: the same anchors are sampled (labels do not depend on predictions); RoI losses: the sampled
        # proposals come from bf16 objectness, so a few differ.
        tolerance = 0.01 if key.startswith("loss_rpn") or key == "loss_objectness" else 0.03
        assert abs(value.item() - reference[key].item()) <= tolerance * reference[key].item(), \
            f"{key}: bf16 {value.item():.5f} vs fp32 {reference[key].item():.5f}"
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_inference_under_bf16_autocast_matches_float32(model_and_data):
    model, images, _ = model_and_data
    model.eval()
    with torch.no_grad():
        reference = model(images)
        with torch.autocast(**BF16):
            detections = model(images)
    for ref, det in zip(reference, detections):
        assert {k: v.dtype for k, v in det.items()} == {k: v.dtype for k, v in ref.items()}
        assert det["boxes"].dtype == det["scores"].dtype == det["masks"].dtype == torch.float32
        # Random heads score every box ~1/81: near-tied detections swap places under any change of rounding (as
        # NHWC vs NCHW does in float32), so 2 of the 10 may find no twin; those found are near-identical.
        same_label = ref["labels"][:10, None] == det["labels"][None, :]
        best = (box_iou(ref["boxes"][:10], det["boxes"]) * same_label).max(1).values
        message = f"top-10 float32 detections' best bf16 twin (IoU, same label): {best.tolist()}"
        assert (best > 0.9).sum() >= 8 and best.median() > 0.98, message


def test_boxes_are_decoded_in_float32_under_bf16_autocast(model_and_data):
    """The same proposals through the box branch in both precisions: decoded boxes agree to well under a pixel.
    Decoding the same deltas in bf16 instead (torchvision's behaviour under autocast) moves them by pixels."""
    model, images, _ = model_and_data
    model.eval()
    heads = model.roi_heads

    def decoded(autocast, proposals=None):
        with torch.no_grad(), torch.autocast(**BF16, enabled=autocast):
            batch, _ = model.transform(images)
            features = model.backbone(batch.tensors)
            if proposals is None:
                proposals, _ = model.rpn(batch, features)
            pooled = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
            _, deltas = heads.box_predictor(pooled)
            return heads.box_coder.decode(deltas, proposals), deltas, proposals

    reference, deltas, proposals = decoded(autocast=False)
    boxes, _, _ = decoded(autocast=True, proposals=proposals)
    assert boxes.dtype == torch.float32
    error = (boxes - reference).abs().max().item()
    in_bf16 = heads.box_coder.decode(deltas.bfloat16(), [p.bfloat16() for p in proposals])
    bf16_error = (in_bf16.float() - reference).abs().max().item()
    assert error < 0.5 < bf16_error, f"max coordinate error: {error:.3f} px (decoding in bf16: {bf16_error:.3f} px)"


def test_roi_pool_of_the_vgg_layout_takes_bf16_features():
    """Fast R-CNN's RoIPool (VGG-16 layout) under bf16 autocast: the max of bf16 values, exactly, in bf16."""
    from torchvision.ops import roi_pool

    from resbackbones.detection.heads import RoIPool

    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 8, 20, 24, generator=gen).bfloat16()
    boxes = [torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 60.0, 40.0]]), torch.tensor([[30.0, 5, 90, 70]])]
    with torch.autocast(**BF16):
        pooled = RoIPool(featmap_name="conv5", stride=16, output_size=7)({"conv5": feature}, boxes, [(320, 384)] * 2)
    expected = roi_pool(feature.float(), boxes, 7, spatial_scale=1 / 16).bfloat16()
    assert pooled.dtype == torch.bfloat16 and torch.equal(pooled, expected)
