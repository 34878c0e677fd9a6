"""Declared contracts of the ResNet family (and output_shape() of every registered backbone)."""
import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import resbackbones as rb
from resbackbones.backbones.registry import get_entry
from resbackbones.layers.blocks import BasicBlock, Bottleneck, ZeroPadShortcut

STAGES = ("stem", "res2", "res3", "res4", "res5")


def _input_for(name: str) -> torch.Tensor:
    family = get_entry(name).family
    return torch.randn(1, 3, 32, 32) if family.startswith("cifar") else torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("name", rb.list_backbones())
def test_output_shape_matches_real_outputs_for_every_registered_backbone(name):
    # On the meta device every op computes its real output shape without touching data, so even the
    # 1202-layer CIFAR nets run in well under a second; numeric behaviour is tested elsewhere.
    with torch.device("meta"):
        backbone = rb.build_backbone(name)
    stages = backbone.stage_names
    backbone.select_out_features(stages)
    declared = backbone.output_shape()
    assert list(declared) == stages
    strides = [spec.stride for spec in declared.values()]
    assert strides == sorted(strides), f"{name}: strides must not decrease stage to stage: {strides}"
    images = _input_for(name).to("meta")
    with torch.no_grad():
        outputs = backbone.eval()(images)
    for stage, spec in declared.items():
        n, c, h, w = outputs[stage].shape
        assert c == spec.channels, f"{name} {stage}: {c} channels, declared {spec.channels}"
        assert (h, w) == (images.shape[2] // spec.stride, images.shape[3] // spec.stride), (
            f"{name} {stage}: spatial {(h, w)} for input {tuple(images.shape[2:])}, declared stride {spec.stride}"
        )


def test_resnet_strides_channels_and_dilation():
    shapes = rb.build_backbone("resnet50", out_features=STAGES).output_shape()
    assert [(s.channels, s.stride) for s in shapes.values()] == [(64, 4), (256, 4), (512, 8), (1024, 16), (2048, 32)]
    dilated = rb.build_backbone("resnet50", out_features=("res5",), res5_dilation=2)
    assert dilated.output_shape()["res5"].stride == 16
    assert dilated(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 2048, 4, 4)
    assert dilated.stages["res5"][1].conv2.dilation == (2, 2)
    basic = rb.build_backbone("resnet18", out_features=("res5",), res5_dilation=2)
    assert basic(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 4, 4)


def test_stride_in_1x1_moves_the_stride():
    torchvision_style = rb.build_backbone("resnet50").stages["res3"][0]
    caffe_style = rb.build_backbone("resnet50", stride_in_1x1=True).stages["res3"][0]
    assert (torchvision_style.conv1.stride, torchvision_style.conv2.stride) == ((1, 1), (2, 2))
    assert (caffe_style.conv1.stride, caffe_style.conv2.stride) == ((2, 2), (1, 1))
    # Same weights, different stride placement: different features (shape tests alone would not see this).
    b = rb.build_backbone("resnet50", stride_in_1x1=True, out_features=("res3",)).eval()
    a = rb.build_backbone("resnet50", out_features=("res3",)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert a(x)["res3"].shape == b(x)["res3"].shape
        assert not torch.allclose(a(x)["res3"], b(x)["res3"])


def test_shortcut_options():
    option_a = rb.build_backbone("resnet18", shortcut="A")
    assert not any("shortcut" in k for k in option_a.state_dict()), "option A must be parameter-free"
    assert isinstance(option_a.stages["res3"][0].shortcut, ZeroPadShortcut)
    assert option_a.stages["res3"][1].shortcut is None
    option_c = rb.build_backbone("resnet18", shortcut="C")
    for stage in ("res2", "res3", "res4", "res5"):
        for block in option_c.stages[stage]:
            assert isinstance(block.shortcut, nn.Conv2d) and block.shortcut.kernel_size == (1, 1)
    option_b = rb.build_backbone("resnet18")
    assert option_b.stages["res2"][0].shortcut is None and option_b.stages["res3"][0].shortcut is not None
    assert option_a(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 2, 2)


def test_zero_pad_shortcut_is_akamasters_formula():
    x = torch.randn(2, 16, 7, 7)
    planes = 32
    expected = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
    assert torch.equal(ZeroPadShortcut(in_channels=16, out_channels=32, stride=2)(x), expected)


def test_plain_any_depth_and_resnext_groups():
    plain = rb.build_backbone("plain34", layers=(1, 1, 1, 1))
    assert [len(plain.stages[s]) for s in ("res2", "res3", "res4", "res5")] == [1, 1, 1, 1]
    assert rb.build_backbone("resnext50_32x4d").stages["res2"][0].conv2.groups == 32


def test_zero_init_residual_zeroes_the_last_norm():
    backbone = rb.build_backbone("resnet50", zero_init_residual=True)
    for stage in ("res2", "res3", "res4", "res5"):
        for block in backbone.stages[stage]:
            assert torch.all(block.conv3.norm.weight == 0)
            assert torch.all(block.conv1.norm.weight == 1)


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_freezes_exactly_the_first_stages(freeze_at):
    torch.manual_seed(0)
    backbone = rb.build_backbone("resnet18", out_features=STAGES, freeze_at=freeze_at).train()
    before = copy.deepcopy(backbone.state_dict())
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad] or [nn.Parameter(torch.ones(1))],
                                lr=0.1)
    trainable = [v for v in backbone(torch.randn(2, 3, 64, 64)).values() if v.requires_grad]
    if trainable:
        sum(v.pow(2).mean() for v in trainable).backward()
    optimizer.step()
    after = backbone.state_dict()
    for index, stage in enumerate(STAGES, start=1):
        keys = [k for k in after if k.startswith(f"stages.{stage}.")]
        frozen = index <= freeze_at
        params = list(backbone.stages[stage].parameters())
        assert all(p.requires_grad != frozen for p in params), f"freeze_at={freeze_at}: {stage} requires_grad wrong"
        norms = [m for m in backbone.stages[stage].modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms)
        changed = [k for k in keys if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])]
        if frozen:
            assert not changed, f"freeze_at={freeze_at}: frozen {stage} changed: {changed[:3]}"
        else:
            assert any(k.endswith("running_mean") for k in changed), f"{stage} BN stats did not update"
            assert any(k.endswith("conv1.weight") for k in changed), f"{stage} weights did not update"


def test_norm_eval_keeps_bn_statistics_while_training():
    backbone = rb.build_backbone("resnet18", norm_eval=True).train()
    before = copy.deepcopy(backbone.state_dict())
    backbone(torch.randn(2, 3, 64, 64))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k)
    assert backbone.training and all(not m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN", "none"])
def test_norm_choices_build_and_run(norm):
    backbone = rb.build_backbone("resnet18", norm=norm).eval()
    assert backbone(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 2, 2)
    if norm == "none":
        assert not any("norm" in k for k in backbone.state_dict())
        assert backbone.stages["res2"][0].conv1.bias is not None


def test_syncbn_builds():
    backbone = rb.build_backbone("resnet18", norm="SyncBN")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules())


def test_bad_options_list_the_choices():
    with pytest.raises(ValueError, match="available: .*resnet18"):
        rb.build_backbone("resnet51")
    with pytest.raises(ValueError, match="'shortcut'"):
        rb.build_backbone("resnet18", shortcutt="A")
    with pytest.raises(ValueError, match="available: A, B, C"):
        rb.build_backbone("resnet18", shortcut="D")
    with pytest.raises(ValueError, match="available: BN, FrozenBN"):
        rb.build_backbone("resnet18", norm="LN")
    with pytest.raises(ValueError, match="available: stem, res2"):
        rb.build_backbone("resnet18", out_features=("res6",))
    with pytest.raises(ValueError, match="res5_dilation"):
        rb.build_backbone("resnet18", res5_dilation=4)


def test_torchscript_export_and_channels_last_equal_eager():
    backbone = rb.build_backbone("resnet18", out_features=("res2", "res5"), shortcut="A").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        eager = backbone(images)
        scripted = torch.jit.script(backbone)(images)
        exported = torch.export.export(backbone, (images,)).module()(images)
        channels_last = copy.deepcopy(backbone).to(memory_format=torch.channels_last)(
            images.contiguous(memory_format=torch.channels_last))
    for name in eager:
        assert torch.allclose(scripted[name], eager[name], atol=1e-5)
        assert torch.allclose(exported[name], eager[name], atol=1e-5)
        assert torch.allclose(channels_last[name], eager[name], atol=1e-4)
    for block in (BasicBlock(in_channels=8, out_channels=16, stride=2),
                  Bottleneck(in_channels=16, out_channels=16, bottleneck_channels=8, groups=2, residual=False)):
        torch.jit.script(block)


def test_torch_compile_equals_eager():
    backbone = rb.build_backbone("resnet18", out_features=("res3",), layers=(1, 1, 1, 1)).eval()
    images = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(backbone, backend="aot_eager")  # the inductor C++ build is too slow for a unit test
    with torch.no_grad():
        assert torch.allclose(compiled(images)["res3"], backbone(images)["res3"], atol=1e-5)


def test_gradient_checkpointing_gives_equal_grads():
    torch.manual_seed(0)
    plain = rb.build_backbone("resnet18", out_features=("res5",)).train()
    checkpointed = rb.build_backbone("resnet18", out_features=("res5",), checkpoint_stages=("res2", "res3", "res4"))
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.train()
    images = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        model(images)["res5"].square().mean().backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6, rtol=1e-4), name
