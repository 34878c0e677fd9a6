"""VGG backbones: converted torchvision weights give torchvision's logits and pool-boundary features exactly."""
import pytest
import torch
import torchvision
from torch import nn

import resbackbones as rb
from resbackbones.backbones.vgg import VGG
from resbackbones.layers import ShapeSpec
from resbackbones.weights import WeightsError
from resbackbones.weights.convert_vgg import (
    from_torchvision_vgg,
    infer_vgg_arch,
    infer_vgg_arch_converted,
    vgg_name,
)

STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
ALL_VGGS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def _randomized_torchvision(name: str, num_classes: int) -> nn.Module:
    """A random torchvision VGG whose BN statistics and classifier are far from their init (a stronger check).

    Built on the meta device and initialised once here: VGG's 100M-parameter fc6 makes init the slow part.
    """
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.zero_()
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, module.in_features ** -0.5)
                nn.init.uniform_(module.bias, -0.1, 0.1)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.uniform_(module.bias, -0.05, 0.05)
    return model.eval()


def _ours_from(reference: nn.Module, name: str, num_classes: int, **options) -> nn.Module:
    """Our classifier holding the converted weights (built on meta: load_state_dict(assign=True) supplies all)."""
    with torch.device("meta"):
        ours = rb.build_classifier(name, num_classes=num_classes, **options)
    ours.load_state_dict(from_torchvision_vgg(reference.state_dict()), strict=True, assign=True)
    return ours.eval()


def _torchvision_stage_features(model: nn.Module, x: torch.Tensor):
    """Inputs of each MaxPool in torchvision's `features`: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (VGG-16)."""
    outputs = []
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            outputs.append(x)
        x = layer(x)
    return outputs


@pytest.mark.parametrize("name,size", [("vgg16", 224), ("vgg16_bn", 64), ("vgg11", 64)])
def test_converted_torchvision_weights_same_logits_and_stage_features(name, size):
    reference = _randomized_torchvision(name, num_classes=10)
    ours = _ours_from(reference, name, 10, out_features=STAGES + ("logits",))
    x = torch.randn(1 if size == 224 else 2, 3, size, size)
    with torch.no_grad():
        expected_logits = reference(x)
        expected_features = _torchvision_stage_features(reference, x)
        outputs = ours(x)
    assert expected_logits.abs().max() > 0.1  # the comparison is not of near-zero numbers
    assert (outputs["logits"] - expected_logits).abs().max().item() <= 1e-5
    for stage, expected, spec in zip(STAGES, expected_features, ours.backbone.output_shape().values()):
        assert outputs[stage].shape == expected.shape == (x.shape[0], spec.channels, size // spec.stride,
                                                          size // spec.stride)
        assert (outputs[stage] - expected).abs().max().item() <= 1e-5, stage


@pytest.mark.parametrize("name", ALL_VGGS)
def test_parameter_counts_equal_torchvision_and_names_round_trip(name):
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
        ours = rb.build_classifier(name, num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    converted = from_torchvision_vgg(reference.state_dict())
    assert converted.keys() == ours.state_dict().keys()
    assert vgg_name(reference.state_dict()) == name == infer_vgg_arch_converted(converted)
    assert infer_vgg_arch(reference.state_dict()) == (int(name[3:5]), name.endswith("_bn"))


def test_stage_shapes_and_faster_rcnn_conv5():
    backbone = rb.build_backbone("vgg16", out_features=STAGES)
    assert backbone.output_shape() == {
        "conv1": ShapeSpec(64, 1), "conv2": ShapeSpec(128, 2), "conv3": ShapeSpec(256, 4),
        "conv4": ShapeSpec(512, 8), "conv5": ShapeSpec(512, 16),
    }
    detection = rb.build_backbone("vgg16")  # default: conv5_3 only, as Faster R-CNN uses it
    assert detection.output_shape() == {"conv5": ShapeSpec(512, 16)} and detection.size_divisibility == 16
    with torch.no_grad():
        assert detection.eval()(torch.randn(1, 3, 96, 128))["conv5"].shape == (1, 512, 6, 8)
    names = [n for n, m in detection.named_modules() if isinstance(m, nn.Conv2d)]
    assert names[-1] == "stages.conv5.conv5_3" and len(names) == 13
    assert list(rb.build_backbone("vgg16", out_features=("conv3",)).stages) == ["conv1", "conv2", "conv3"]


def test_from_torchvision_dispatches_vgg_and_fast_path_folds_bn():
    reference = _randomized_torchvision("vgg11_bn", num_classes=10)
    with torch.device("meta"):
        model = rb.build_classifier("vgg11_bn", num_classes=10)
    model.load_state_dict(rb.weights.from_torchvision(reference.state_dict()), strict=True, assign=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
    fast = rb.optimize_for_inference(model, dtype=torch.float32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert (fast(x) - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_freeze_and_norm_options():
    model = rb.build_backbone("vgg16_bn", out_features=("conv3",), freeze_at=2)
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "conv2"}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("stages.conv3."))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.stages["conv1"].modules())
    gn = rb.build_backbone("vgg11", norm="GN")
    assert isinstance(gn.stages["conv1"].conv1_1.norm, nn.GroupNorm)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unsupported depth 12; available: 11, 13, 16, 19"):
        VGG(depth=12)
    with pytest.raises(WeightsError, match=r"found 0 conv weights under features"):
        from_torchvision_vgg({"features.1.running_mean": torch.zeros(3)})
    with torch.device("meta"):  # only names and shapes matter here
        state = torchvision.models.vgg11(weights=None, num_classes=3).state_dict()
        vgg16 = from_torchvision_vgg(torchvision.models.vgg16(weights=None, num_classes=3).state_dict())
        vgg19 = rb.build_classifier("vgg19", num_classes=3)
    state["features.99.weight"] = torch.zeros(1)
    state["classifier.9.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"vgg11 state dict has keys with no counterpart.*features\.99\.weight, "
                                           r"classifier\.9\.weight"):
        from_torchvision_vgg(state)
    # A VGG-16 checkpoint loaded into VGG-19 lists the missing convs by name.
    with pytest.raises(WeightsError, match=r"(?s)missing keys .*stages\.conv3\.conv3_4\.weight"):
        rb.weights.load_state_dict(vgg19, vgg16)
