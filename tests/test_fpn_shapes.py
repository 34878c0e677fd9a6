"""FPN wiring from ShapeSpec: ResNet and VGG, real tensor shapes == output_shape(), stride checks, torchvision layout."""
import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

import resbackbones as rb
from resbackbones.layers import ShapeSpec
from resbackbones.necks import FPN, BackboneWithFPN


def _check(features, shapes, size):
    assert list(features) == list(shapes)
    for name, tensor in features.items():
        spec = shapes[name]
        assert tensor.shape[1] == spec.channels, name
        assert tensor.shape[-2:] == (-(-size[0] // spec.stride), -(-size[1] // spec.stride)), (name, tensor.shape)


@pytest.mark.parametrize("name, top_block, expected", [
    ("resnet18", "maxpool", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),
    ("resnet50", "p6p7", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}),
    ("resnet18", "p6p7_c5", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}),
    ("resnet18", "none", {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),
])
def test_resnet_fpn_shapes(name, top_block, expected):
    backbone = rb.build_backbone(name, out_features=("res2", "res3", "res4", "res5"))
    model = BackboneWithFPN(backbone=backbone, fpn=FPN(input_shapes=backbone.output_shape(), out_channels=64,
                                                       top_block=top_block))
    assert model.output_shape() == {k: ShapeSpec(64, s) for k, s in expected.items()}
    assert model.out_channels == 64
    with torch.no_grad():
        _check(model(torch.rand(1, 3, 128, 96)), model.output_shape(), (128, 96))


def test_vgg_fpn_shapes_come_from_shapespec():
    backbone = rb.build_backbone("vgg16", out_features=("conv2", "conv3", "conv4", "conv5"))
    fpn = FPN(input_shapes=backbone.output_shape(), out_channels=32, top_block="maxpool", norm="GN")
    # VGG's channels (128, 256, 512, 512) are read from its ShapeSpecs, never assumed
    assert [b[0].in_channels for b in fpn.inner_blocks] == [128, 256, 512, 512]
    assert fpn.output_shape() == {"p1": ShapeSpec(32, 2), "p2": ShapeSpec(32, 4), "p3": ShapeSpec(32, 8),
                                  "p4": ShapeSpec(32, 16), "p5": ShapeSpec(32, 32)}
    model = BackboneWithFPN(backbone=backbone, fpn=fpn)
    with torch.no_grad():
        _check(model(torch.rand(1, 3, 64, 80)), model.output_shape(), (64, 80))


def test_strides_must_double():
    shapes = {"a": ShapeSpec(64, 4), "b": ShapeSpec(128, 16), "c": ShapeSpec(256, 32)}
    with pytest.raises(ValueError, match=r"strides must double.*'a' has stride 4 and 'b' has stride 16"):
        FPN(input_shapes=shapes)
    with pytest.raises(ValueError, match="unknown in_features \\['res6'\\]; available: a, b, c"):
        FPN(input_shapes=shapes, in_features=["res6"])
    with pytest.raises(ValueError, match="unknown top_block"):
        FPN(input_shapes={"a": ShapeSpec(8, 4), "b": ShapeSpec(8, 8)}, top_block="p6p8")
    backbone = rb.build_backbone("resnet18", out_features=("res4", "res5"))
    with pytest.raises(ValueError, match="needs backbone features \\['res3'\\]"):
        BackboneWithFPN(backbone=backbone, fpn=FPN(input_shapes={"res3": ShapeSpec(128, 8),
                                                                 "res4": ShapeSpec(256, 16)}))


def test_same_math_and_keys_as_torchvision_fpn():
    shapes = {"res3": ShapeSpec(16, 8), "res4": ShapeSpec(32, 16), "res5": ShapeSpec(64, 32)}
    ours = FPN(input_shapes=shapes, out_channels=24, top_block="none")
    theirs = FeaturePyramidNetwork([16, 32, 64], 24)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = {"res3": torch.rand(2, 16, 16, 16), "res4": torch.rand(2, 32, 8, 8), "res5": torch.rand(2, 64, 4, 4)}
    expected = theirs(dict(x))
    got = ours(x)
    assert list(got) == ["p3", "p4", "p5"]
    for g, e in zip(got.values(), expected.values()):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
