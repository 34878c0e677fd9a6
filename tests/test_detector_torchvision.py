"""Our ResNet-50-FPN Faster / Mask R-CNN == torchvision's (randomly initialised, weights copied, nothing downloaded).

Two torchvision layouts are matched: the public builders with weights=None (BatchNorm, all layers trainable ->
norm="BN", freeze_at=0) and the layout torchvision uses with pretrained backbones (FrozenBatchNorm2d,
trainable_backbone_layers=3 -> norm="FrozenBN", freeze_at=2).
"""
import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, MaskRCNN, fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

import resbackbones as rb
from resbackbones.detection import DetectorConfig
from resbackbones.weights import WeightsError
from resbackbones.weights.convert_torchvision import detector_from_torchvision

# Small, fast settings applied identically to both models.
TV_KWARGS = dict(min_size=256, max_size=320, box_score_thresh=0.0, box_detections_per_img=50,
                 rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                 rpn_post_nms_top_n_test=200, box_batch_size_per_image=64)


def _our_config(*, mask: bool, norm: str, freeze_at: int) -> DetectorConfig:
    cfg = DetectorConfig(num_classes=90)  # torchvision's 91 includes background
    # torchvision batches NCHW; NHWC convs round differently (~1e-6), enough to reorder the near-tied scores of a
    # random-init model. test_channels_last_equals_nchw_in_float64 covers our default layout.
    cfg.channels_last = False
    cfg.backbone.norm, cfg.backbone.freeze_at = norm, freeze_at
    cfg.mask_head.enabled = mask
    cfg.input.min_size, cfg.input.max_size = (256,), 320
    cfg.roi_heads.score_thresh, cfg.roi_heads.detections_per_img = 0.0, 50
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 500, 300
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 300, 200
    cfg.roi_heads.batch_size_per_image = 64
    return cfg


def _inputs():
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 256, 320, generator=gen), torch.rand(3, 240, 300, generator=gen)]
    masks0 = torch.zeros(2, 256, 320, dtype=torch.uint8)
    masks0[0, 30:120, 20:110] = 1
    masks0[1, 70:220, 60:210] = 1
    masks1 = torch.zeros(1, 240, 300, dtype=torch.uint8)
    masks1[0, 50:160, 40:150] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 30, 110, 120], [60, 70, 210, 220]]), "labels": torch.tensor([1, 18]),
         "masks": masks0},
        {"boxes": torch.tensor([[40.0, 50, 150, 160]]), "labels": torch.tensor([3]), "masks": masks1},
    ]
    return images, targets


def _calibrate_bn(tv_model, images):
    """Random-init BN statistics (0, 1) blow activations up through 50 layers; use one batch's statistics instead."""
    bns = [m for m in tv_model.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    tv_model.train()
    with torch.no_grad():
        batch, _ = tv_model.transform(images)
        tv_model.backbone.body(batch.tensors)
    for bn in bns:
        bn.momentum = 0.1


def _pair(mask: bool):
    torch.manual_seed(0)
    images, targets = _inputs()
    builder = maskrcnn_resnet50_fpn if mask else fasterrcnn_resnet50_fpn
    tv = builder(weights=None, weights_backbone=None, **TV_KWARGS)
    _calibrate_bn(tv, images)
    ours = rb.build_detector(_our_config(mask=mask, norm="BN", freeze_at=0))
    ours.load_state_dict(detector_from_torchvision(tv.state_dict()), strict=True)
    return tv, ours, images, targets


def _losses(model, images, targets):
    model.train()
    torch.manual_seed(123)  # the RPN / RoI samplers draw random subsets
    return model(images, targets)


@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_same_outputs_and_losses_as_torchvision(mask):
    tv, ours, images, targets = _pair(mask)
    tv.eval(), ours.eval()
    with torch.no_grad():
        expected, got = tv(images), ours(images)
    for e, g in zip(expected, got):
        assert e.keys() == g.keys() and len(e["boxes"]) > 0
        for key in e:
            torch.testing.assert_close(g[key], e[key], rtol=1e-4, atol=1e-4, msg=f"output {key!r} differs")
    expected_losses = _losses(tv, images, targets)
    got_losses = _losses(ours, images, targets)
    assert expected_losses.keys() == got_losses.keys()
    for key in expected_losses:
        torch.testing.assert_close(got_losses[key], expected_losses[key], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"loss {key}: ours {got_losses[key]} vs torchvision "
                                                 f"{expected_losses[key]}\n{m}")


def test_frozen_bn_layout_matches_torchvision_pretrained_layout():
    """torchvision with a pretrained backbone: FrozenBN everywhere, conv1 + layer1 frozen (trainable_layers=3)."""
    tv_bn, _, images, targets = _pair(mask=True)
    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    tv = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, **TV_KWARGS)
    state = {k: v for k, v in tv_bn.state_dict().items() if not k.endswith("num_batches_tracked")}
    tv.load_state_dict(state, strict=True)
    ours = rb.build_detector(_our_config(mask=True, norm="FrozenBN", freeze_at=2))
    ours.load_state_dict(detector_from_torchvision(tv.state_dict()), strict=True)

    tv_trainable = {k for k, p in tv.named_parameters() if p.requires_grad}
    our_trainable = {k for k, p in ours.named_parameters() if p.requires_grad}
    full = tv.state_dict()
    tagged = detector_from_torchvision({k: torch.tensor([i]) for i, k in enumerate(full)})
    ours_name_of = {list(full)[int(v)]: k for k, v in tagged.items()}
    assert our_trainable == {ours_name_of[k] for k in tv_trainable}

    expected = _losses(tv, images, targets)
    got = _losses(ours, images, targets)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    sum(expected.values()).backward()
    sum(got.values()).backward()
    for tv_name, our_name in (("backbone.body.layer2.0.conv1.weight", "backbone.body.stages.res3.0.conv1.weight"),
                              ("backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.inner_blocks.0.0.weight"),
                              ("rpn.head.conv.0.0.weight", "rpn.head.conv.0.0.weight")):
        # Our RoIAlign backward sums in another order; float32 rounding (~1e-7) grows through 40 random-init layers
        # to ~5e-4 of the largest entry (in float64 both agree to 1e-14: tests/test_roi_align.py), so the absolute
        # tolerance scales with the gradient.
        expected_grad = dict(tv.named_parameters())[tv_name].grad
        torch.testing.assert_close(dict(ours.named_parameters())[our_name].grad, expected_grad, rtol=1e-3,
                                   atol=2e-3 * expected_grad.abs().max().item())


def test_channels_last_equals_nchw_in_float64():
    """The default NHWC batch (model.channels_last) computes the NCHW model's features, losses and gradients.

    In float64: in float32 the two layouts' kernels round differently and a random-init ResNet-50 in eval mode is so
    ill-conditioned (stem gradients ~1e6) that either layout is only ~2 % from the float64 value.
    """
    _, nchw, images, targets = _pair(mask=True)  # Mask R-CNN: box and mask paths
    cfg = _our_config(mask=True, norm="BN", freeze_at=0)
    cfg.channels_last = True
    nhwc = rb.build_detector(cfg)
    nhwc.load_state_dict(nchw.state_dict())
    nchw.double(), nhwc.double()
    images = [image.double() for image in images]
    for target in targets:
        target["boxes"] = target["boxes"].double()
    nchw.eval(), nhwc.eval()
    batch, _ = nchw.transform(images)
    batch_cl, _ = nhwc.transform(images)
    assert batch_cl.tensors.is_contiguous(memory_format=torch.channels_last)
    expected, got = nchw.backbone(batch.tensors), nhwc.backbone(batch_cl.tensors)
    for level in expected:
        torch.testing.assert_close(got[level], expected[level], rtol=1e-9, atol=1e-9)
    probes = {level: torch.randn(f.shape, generator=torch.Generator().manual_seed(i), dtype=f.dtype)
              for i, (level, f) in enumerate(expected.items())}
    sum((f * probes[k]).sum() for k, f in expected.items()).backward()
    sum((f * probes[k]).sum() for k, f in got.items()).backward()
    for name, param in nchw.backbone.named_parameters():
        torch.testing.assert_close(dict(nhwc.backbone.named_parameters())[name].grad, param.grad, rtol=1e-9,
                                   atol=1e-12 * param.grad.abs().max().item())
    expected_losses, got_losses = _losses(nchw, images, targets), _losses(nhwc, images, targets)
    for key in expected_losses:
        torch.testing.assert_close(got_losses[key], expected_losses[key], rtol=1e-9, atol=1e-12)


def test_detector_from_torchvision_refuses_a_non_detector_state_dict():
    with pytest.raises(WeightsError, match=r"no backbone\.body\.\* keys; first keys found: conv1\.weight"):
        detector_from_torchvision(resnet50().state_dict())
