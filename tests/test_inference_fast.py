"""rb.optimize_for_inference: BN folded, channels_last, bf16 - same outputs as the eager model."""
import pytest
import torch
from torch import nn

import resbackbones as rb
from resbackbones.inference import MkldnnConv, fold_norms


def _trained_looking(model):
    # Non-trivial BN statistics so that folding is actually exercised.
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model.eval()


def test_resnet50_fp32_fast_path_within_1e4_and_bf16_same_top1():
    torch.manual_seed(0)
    model = _trained_looking(rb.build_classifier("resnet50", num_classes=10))
    images = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
    fast = rb.optimize_for_inference(model, dtype=torch.float32)
    out = fast(images)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    diff = (out - reference).abs().max().item()
    assert diff <= 1e-4 * max(1.0, reference.abs().max().item()), f"fp32 fast path differs by {diff:.3g}"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "some BatchNorm was not folded"
    bf16 = rb.optimize_for_inference(model, dtype=torch.bfloat16)
    agreement = (bf16(images).argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.99, f"bf16 top-1 agreement {agreement:.2f}"
    # The original model is untouched.
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and model.training is False


@pytest.mark.parametrize(
    "name,options",
    [("resnet18", {"shortcut": "A"}), ("plain18", {}), ("resnext50_32x4d", {"layers": (1, 1, 1, 1)}),
     ("resnet18", {"norm": "FrozenBN", "res5_dilation": 2}), ("resnet18", {"norm": "GN"})],
)
def test_backbone_dict_outputs_match(name, options):
    backbone = _trained_looking(rb.build_backbone(name, out_features=("res2", "res5"), **options))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = backbone(images)
    out = rb.optimize_for_inference(backbone, dtype=torch.float32)(images)
    assert set(out) == {"res2", "res5"}
    for key in reference:
        scale = max(1.0, reference[key].abs().max().item())
        assert (out[key] - reference[key]).abs().max().item() <= 1e-4 * scale, key


def test_fused_path_is_used_on_cpu_and_fold_handles_sequential_conv_bn():
    fast = rb.optimize_for_inference(rb.build_classifier("resnet18").eval())
    if torch.backends.mkldnn.is_available():
        assert any(isinstance(m, MkldnnConv) for m in fast.modules())
    torch.manual_seed(0)
    seq = _trained_looking(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = seq(images)
        folded = fold_norms(seq)
        assert isinstance(folded[1], nn.Identity)
        assert torch.allclose(folded(images), expected, atol=1e-5)


def test_reduced_precision_dtype_is_validated():
    with pytest.raises(ValueError, match="bfloat16"):
        rb.optimize_for_inference(rb.build_backbone("resnet18"), dtype=torch.int8)


@pytest.mark.parametrize("name,size", [("vgg11_bn", 64), ("cifar_resnet20", 32), ("cifar_plain20", 32)])
def test_other_families_share_the_fast_path(name, size):
    model = _trained_looking(rb.build_classifier(name, num_classes=10))
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model(images)
    fast = rb.optimize_for_inference(model, dtype=torch.float32)
    assert (fast(images) - reference).abs().max().item() <= 1e-4 * max(1.0, reference.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


def test_auto_precision_follows_the_hardware_and_float32_forces_fp32(monkeypatch):
    """dtype="auto" (default) takes utils.amp.resolve_amp's choice for the model's device; float32 / None force
    fp32; the choice and its reason are on the result."""
    import resbackbones.inference as inference

    model = _trained_looking(rb.build_classifier("resnet18", num_classes=10))
    images = torch.randn(2, 3, 32, 32)
    for amp, dtype, precision in (("bf16", torch.bfloat16, "bf16"), ("none", None, "fp32")):
        monkeypatch.setattr(inference, "resolve_amp", lambda mode, device, amp=amp: (amp, f"auto: test says {amp}"))
        fast = rb.optimize_for_inference(model)
        assert (fast.precision, fast.dtype, fast.precision_reason) == (precision, dtype, f"auto: test says {amp}")
        assert next(fast.model.parameters()).dtype == (dtype or torch.float32)
        assert fast(images).dtype == torch.float32  # cast back to the input's dtype
    for forced in (torch.float32, None):
        fast = rb.optimize_for_inference(model, dtype=forced)
        assert fast.precision == "fp32" and fast.dtype is None and "precision=fp32" in repr(fast)
    with pytest.raises(ValueError, match="'auto', None, torch.float32"):
        rb.optimize_for_inference(model, dtype="fp32")
