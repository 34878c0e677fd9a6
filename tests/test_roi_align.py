"""FastMultiScaleRoIAlign (sparse CPU RoIAlign) == torchvision's MultiScaleRoIAlign / roi_align, values and gradients.

float64 checks the sampling rule itself (same taps and weights: agreement to ~1e-15); float32 checks the rounding
users see. Hard cases: RoIs partly or wholly outside the map, smaller than a pixel, on the last row/column, an empty
FPN level, no RoIs at all, several images, channels_last features.
"""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from resbackbones.detection.roi_align import FastMultiScaleRoIAlign, sparse_roi_align

LEVELS = ["p2", "p3", "p4", "p5"]
IMAGE = (256, 320)


def _features(dtype, channels=16, batch=2, channels_last=False):
    gen = torch.Generator().manual_seed(0)
    feats = {name: torch.randn(batch, channels, IMAGE[0] // 4 // 2 ** i, IMAGE[1] // 4 // 2 ** i, generator=gen,
                               dtype=dtype) for i, name in enumerate(LEVELS)}
    if channels_last:
        feats = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    return feats


def _boxes(dtype, n=60, batch=2):
    gen = torch.Generator().manual_seed(1)
    h, w = IMAGE
    out = []
    for _ in range(batch):
        xy = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
        wh = torch.rand(n, 2, generator=gen, dtype=dtype) ** 2 * 300
        boxes = torch.cat([xy, xy + wh], 1)
        hard = torch.tensor([[0.0, 0.0, 0.3, 0.2],  # smaller than a pixel of every level
                             [w - 2.0, h - 2.0, w, h],  # last row / column
                             [-30.0, -20.0, 40.0, 50.0],  # partly outside (top-left)
                             [w - 20.0, h - 10.0, w + 60.0, h + 40.0],  # partly outside (bottom-right)
                             [w + 10.0, h + 10.0, w + 90.0, h + 70.0],  # wholly outside: zeros
                             [0.0, 0.0, float(w), float(h)]], dtype=dtype)  # the whole image (p5)
        out.append(torch.cat([boxes, hard]))
    return out


def _pool_both(output_size, sampling_ratio, dtype, channels_last=False, boxes=None):
    feats = _features(dtype, channels_last=channels_last)
    boxes = _boxes(dtype) if boxes is None else boxes
    results = []
    for pooler in (MultiScaleRoIAlign(LEVELS, output_size, sampling_ratio),
                   FastMultiScaleRoIAlign(LEVELS, output_size, sampling_ratio)):
        inputs = {k: v.clone().requires_grad_() for k, v in feats.items()}
        out = pooler(inputs, boxes, [IMAGE, IMAGE])
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        grads = torch.autograd.grad((out * probe).sum(), list(inputs.values())) if out.numel() else None
        results.append((out, grads))
    return results


@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), (14, 2), (7, 1), (5, 3)])
def test_float64_same_values_and_gradients(output_size, sampling_ratio):
    (ref, ref_grads), (ours, our_grads) = _pool_both(output_size, sampling_ratio, torch.float64)
    assert ours.shape == ref.shape == (2 * 66, 16, output_size, output_size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for level, g_ref, g_ours in zip(LEVELS, ref_grads, our_grads):
        torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-11, msg=f"gradient of {level}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_float32_matches_to_rounding(channels_last):
    (ref, ref_grads), (ours, our_grads) = _pool_both(7, 2, torch.float32, channels_last=channels_last)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g_ref, g_ours in zip(ref_grads, our_grads):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-4)


def test_outside_roi_pools_zeros_and_empty_inputs():
    (ref, _), (ours, _) = _pool_both(7, 2, torch.float64)
    wholly_outside = 60 + 4
    assert torch.count_nonzero(ours[wholly_outside]) == 0 and torch.count_nonzero(ref[wholly_outside]) == 0
    (ref, _), (ours, _) = _pool_both(7, 2, torch.float32, boxes=[torch.zeros(0, 4), torch.zeros(0, 4)])
    assert ours.shape == ref.shape == (0, 16, 7, 7)


def test_one_level_equals_roi_align():
    feat = _features(torch.float64)["p4"].requires_grad_()
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64),
                      torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 5.0, 5.0], [300, 240, 400, 300]],
                                   dtype=torch.float64)], 1)
    ref = roi_align(feat, rois, (7, 7), spatial_scale=1 / 16, sampling_ratio=2, aligned=False)
    ours = sparse_roi_align([(feat, 1 / 16)], rois, torch.zeros(3, dtype=torch.long), (7, 7), 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (g_ref,) = torch.autograd.grad(ref.sum(), feat)
    (g_ours,) = torch.autograd.grad(ours.sum(), feat)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_adaptive_sampling_uses_torchvision_unchanged():
    """Adaptive sampling (ratio 0) takes torchvision's kernel: identical results."""
    boxes = _boxes(torch.float32)
    feats = _features(torch.float32)
    ref = MultiScaleRoIAlign(LEVELS, 7, 0)(feats, boxes, [IMAGE, IMAGE])
    assert torch.equal(FastMultiScaleRoIAlign(LEVELS, 7, 0)(feats, boxes, [IMAGE, IMAGE]), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_reduced_precision_features_are_pooled_in_float32(dtype, channels_last):
    """bf16 / fp16 features (CPU autocast) take the sparse path with float32 maths: output and gradients are
    torchvision's float32 result on the same (rounded) features, rounded once to the features' dtype (error <= half
    an ulp), with or without autocast (autocast must not push the product itself down to bf16)."""
    boxes = _boxes(torch.float32)
    low = {k: v.to(dtype) for k, v in _features(torch.float32, channels_last=channels_last).items()}
    wide = {k: v.float().requires_grad_() for k, v in low.items()}
    ref = MultiScaleRoIAlign(LEVELS, 7, 2)(wide, boxes, [IMAGE, IMAGE])
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    ref_grads = torch.autograd.grad((ref * probe.float()).sum(), list(wide.values()))
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11  # relative, round to nearest

    def within_rounding(ours, reference, atol):
        return bool(((ours.float() - reference).abs() <= half_ulp * reference.abs() + atol).all())

    for autocast in (False, True):
        inputs = {k: v.clone().requires_grad_() for k, v in low.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ours = FastMultiScaleRoIAlign(LEVELS, 7, 2)(inputs, boxes, [IMAGE, IMAGE])
        grads = torch.autograd.grad((ours * probe).sum(), list(inputs.values()))
        assert ours.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert within_rounding(ours, ref, 1e-6), f"values, autocast={autocast}"
        for level, g_ref, g_ours in zip(LEVELS, ref_grads, grads):
            assert within_rounding(g_ours, g_ref, 1e-5), f"gradient of {level}, autocast={autocast}"


def test_bfloat16_matches_torchvision_autocast_kernel():
    """Under CPU autocast torchvision computes roi_align in float32 and rounds to bf16: ours agrees to 1 bf16 ulp."""
    boxes = _boxes(torch.float32)
    half = {k: v.bfloat16().requires_grad_() for k, v in _features(torch.float32).items()}  # the sparse path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = MultiScaleRoIAlign(LEVELS, 7, 2)(half, boxes, [IMAGE, IMAGE])
        ours = FastMultiScaleRoIAlign(LEVELS, 7, 2)(half, boxes, [IMAGE, IMAGE])
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2.0 ** -7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_without_gradients_it_is_torchvisions_kernel(dtype):
    """Inference (no_grad, or features that need no gradient) runs torchvision's op itself: bitwise its result,
    as the exported .pt / .pt2 files compute it, so eager and exported masks agree at the 0.5 threshold."""
    boxes = _boxes(torch.float32)
    feats = {k: v.to(dtype) for k, v in _features(torch.float32).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = MultiScaleRoIAlign(LEVELS, 7, 2)(feats, boxes, [IMAGE, IMAGE])
        assert torch.equal(FastMultiScaleRoIAlign(LEVELS, 7, 2)(feats, boxes, [IMAGE, IMAGE]), ref)
        with torch.no_grad():
            grad_feats = {k: v.clone().requires_grad_() for k, v in feats.items()}
            assert torch.equal(FastMultiScaleRoIAlign(LEVELS, 7, 2)(grad_feats, boxes, [IMAGE, IMAGE]), ref)
