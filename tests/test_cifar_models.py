"""CIFAR ResNets / plain nets: structure (depth 6n+2, shortcuts A/B/C, plain has none), shapes, option-A formula."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resbackbones as rb
from resbackbones.backbones.cifar import CifarResNet
from resbackbones.layers import Conv2d
from resbackbones.layers.blocks import BasicBlock, ZeroPadShortcut
from resbackbones.layers.shape_spec import ShapeSpec
from resbackbones.weights import WeightsError
from resbackbones.weights.convert_cifar import from_cifar_checkpoint, infer_cifar_arch

RESNETS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
           "cifar_resnet1202"]
PLAINS = ["cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56", "cifar_plain110"]
ALL_STAGES = ("stem", "res2", "res3", "res4")


def _count_layers(model: nn.Module) -> int:
    # The paper's depth counts weighted layers: convs on the main path + the final fc (no projection shortcuts).
    convs = sum(1 for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name)
    fcs = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    return convs + fcs


def test_registry_lists_every_family_member():
    assert rb.list_backbones("cifar_resnet") == ["cifar_resnet"] + RESNETS
    assert rb.list_backbones("cifar_plain") == ["cifar_plain"] + PLAINS


@pytest.mark.parametrize("name", RESNETS + PLAINS)
def test_depth_and_output_shapes(name):
    depth = int(name.rsplit("resnet", 1)[-1] if "resnet" in name else name.rsplit("plain", 1)[-1])
    # The 1202-layer net (19.4M parameters) is built on the meta device: shapes and structure without the cost.
    device = "meta" if depth > 110 else "cpu"
    with torch.device(device):
        model = rb.build_classifier(name, num_classes=10, out_features=ALL_STAGES + ("logits",))
    backbone = model.backbone
    assert backbone.output_shape() == {
        "stem": ShapeSpec(16, 1), "res2": ShapeSpec(16, 1), "res3": ShapeSpec(32, 2), "res4": ShapeSpec(64, 4),
    }
    assert [len(backbone.stages[s]) for s in ALL_STAGES[1:]] == [(depth - 2) // 6] * 3
    assert _count_layers(model) == depth
    assert model.head.fc.in_features == 64
    if device == "cpu":
        with torch.no_grad():
            outputs = model.eval()(torch.randn(1, 3, 16, 16))
        for stage, spec in backbone.output_shape().items():
            assert outputs[stage].shape == (1, spec.channels, 16 // spec.stride, 16 // spec.stride)
        assert outputs["logits"].shape == (1, 10)


def test_parameter_counts_match_the_paper():
    # He et al. 2015 Table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M / 19.4M parameters.
    expected = {"cifar_resnet20": 0.27e6, "cifar_resnet32": 0.46e6, "cifar_resnet44": 0.66e6,
                "cifar_resnet56": 0.85e6, "cifar_resnet110": 1.7e6, "cifar_resnet1202": 19.4e6}
    for name, count in expected.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in rb.build_classifier(name, num_classes=10).parameters())
        assert abs(params - count) / count < 0.03, (name, params)
    # Exactly the published checkpoint's tensors for ResNet-20 (SOURCE.md: 0.270M).
    assert sum(p.numel() for p in rb.build_classifier("cifar_resnet20", num_classes=10).parameters()) == 269722


def test_plain_nets_have_no_shortcut_and_same_convs():
    plain = rb.build_classifier("cifar_plain56", num_classes=10)
    resnet = rb.build_classifier("cifar_resnet56", num_classes=10)
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27 and all(not b.residual and b.shortcut is None for b in blocks)
    assert not any("shortcut" in name for name, _ in plain.named_modules())
    # Same weights, same names: the plain twin differs only in the missing additions.
    assert plain.state_dict().keys() == resnet.state_dict().keys()
    resnet.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x), resnet.eval()(x))


def test_option_a_has_no_shortcut_parameters_and_matches_akamaster_formula():
    model = rb.build_backbone("cifar_resnet20")
    assert not any("shortcut" in name for name, _ in model.named_parameters())
    assert not any("shortcut" in name for name in model.state_dict())
    pads = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(pads) == 2  # res3.0 and res4.0 change shape; every other block adds the plain identity
    x = torch.randn(2, 16, 32, 32)
    planes = 32
    reference = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)  # akamaster
    block = model.stages["res3"][0]
    assert torch.equal(block.shortcut(x), reference)
    y = torch.randn(2, 32, 16, 16)
    assert torch.equal(model.stages["res4"][0].shortcut(y), F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 16, 16)))


@pytest.mark.parametrize("shortcut,projections", [("B", 2), ("C", 27)])
def test_option_b_and_c_add_projections(shortcut, projections):
    model = rb.build_backbone("cifar_resnet56", shortcut=shortcut)
    convs = [m for n, m in model.named_modules() if n.endswith("shortcut") and isinstance(m, Conv2d)]
    assert len(convs) == projections
    assert all(c.kernel_size == (1, 1) and c.norm is not None for c in convs)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32))["res4"].shape == (1, 64, 8, 8)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN", "none"])
def test_norm_options(norm):
    model = rb.build_classifier("cifar_resnet20", num_classes=10, norm=norm)
    stem = model.backbone.stages["stem"].conv1
    if norm == "none":
        assert stem.norm is None and stem.bias is not None
    else:
        assert stem.norm is not None and stem.bias is None
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_any_depth_6n_plus_2_and_clear_errors():
    model = rb.build_backbone("cifar_resnet", depth=8, out_features=ALL_STAGES)
    assert [len(model.stages[s]) for s in ALL_STAGES[1:]] == [1, 1, 1]
    assert isinstance(rb.build_backbone("cifar_plain", depth=14), CifarResNet)
    for bad in (21, 7, 2, 0, -4):
        with pytest.raises(ValueError, match=rf"6n\+2.*got {bad}"):
            rb.build_backbone("cifar_resnet", depth=bad)
    with pytest.raises(ValueError, match=r"cifar_resnet20 has depth 20; for depth=32 build 'cifar_resnet'"):
        rb.build_backbone("cifar_resnet20", depth=32)
    with pytest.raises(ValueError, match=r"unknown shortcut 'D'; available: A, B, C"):
        rb.build_backbone("cifar_resnet20", shortcut="D")
    with pytest.raises(ValueError, match=r"unknown out_features \['res5'\]; available: stem, res2, res3, res4"):
        rb.build_backbone("cifar_resnet20", out_features=("res5",))


def test_freeze_at_and_out_features():
    model = rb.build_backbone("cifar_resnet20", out_features=("res2", "res3"), freeze_at=2)
    assert list(model.stages) == ["stem", "res2", "res3"]  # res4 not built: nothing asked for it
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("stages.stem.", "stages.res2.")) for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("stages.res3."))


def test_converter_handles_other_depths_option_b_and_bad_checkpoints():
    # A depth-8 option-B checkpoint in akamaster's names round-trips through the converter.
    ours = rb.build_classifier("cifar_resnet", num_classes=10, depth=8, shortcut="B")
    theirs = {}
    for key, value in ours.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        k = key.replace("backbone.stages.stem.conv1.norm.", "bn1.").replace("backbone.stages.stem.", "")
        k = k.replace("head.fc.", "linear.")
        for stage in (2, 3, 4):
            k = k.replace(f"backbone.stages.res{stage}.", f"layer{stage - 1}.")
        k = k.replace(".shortcut.norm.", ".shortcut.1.").replace(".shortcut.weight", ".shortcut.0.weight")
        k = k.replace(".conv1.norm.", ".bn1.").replace(".conv2.norm.", ".bn2.")
        theirs["module." + k] = value
    assert infer_cifar_arch(theirs) == ("cifar_resnet", {"depth": 8, "shortcut": "B"})
    converted = from_cifar_checkpoint({"state_dict": theirs, "best_prec1": 10.0})
    fresh = rb.build_classifier("cifar_resnet", num_classes=10, depth=8, shortcut="B")
    fresh.load_state_dict(converted, strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)

    unequal = {k: v for k, v in theirs.items() if not k.startswith("module.layer3.")}
    with pytest.raises(WeightsError, match=r"1/1/0 blocks in layer1/layer2/layer3"):
        from_cifar_checkpoint(unequal)
    with pytest.raises(WeightsError, match=r"not a CIFAR ResNet checkpoint.*first keys found: features\.0\.weight"):
        from_cifar_checkpoint({"features.0.weight": torch.zeros(1)})
    extra = dict(theirs, **{"module.layer1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"no counterpart here: layer1\.0\.extra\.weight"):
        from_cifar_checkpoint(extra)


def test_evaluate_classifier_ten_crop_dict_outputs_and_accuracy_helper():
    from resbackbones.evaluation import accuracy, evaluate_classifier

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert accuracy(logits, torch.tensor([1, 1, 0]), topk=(1, 2, 5)) == pytest.approx([100 / 3, 200 / 3, 100.0])
    with pytest.raises(ValueError, match=r"expected logits \[N, C\] and targets \[N\], got \(3, 3\) and \(2,\)"):
        accuracy(logits, torch.tensor([1, 1]))

    model = rb.build_classifier("cifar_resnet", depth=8, num_classes=10, out_features=("res3", "logits")).eval()
    x, y = torch.randn(3, 3, 36, 36), torch.tensor([0, 4, 9])
    # The paper's 10 crops by hand: 4 corners + centre of a 36 px image at 32 px, then the same flipped.
    crops = [x[..., :32, :32], x[..., :32, 4:], x[..., 4:, :32], x[..., 4:, 4:], x[..., 2:34, 2:34]]
    crops += [c.flip(-1) for c in crops]
    with torch.no_grad():
        expected = torch.stack([model(c)["logits"] for c in crops], dim=1).mean(dim=1)
    top1 = accuracy(expected, y)[0]
    loss = torch.nn.functional.cross_entropy(expected, y).item()
    model.train()
    metrics = evaluate_classifier(model, [(x, y)], "cpu", ten_crop_size=32)
    assert model.training  # mode restored
    assert metrics["count"] == 3 and metrics["top1"] == pytest.approx(top1) and metrics["top5"] >= top1
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    pre_cropped = evaluate_classifier(model, [(torch.stack(crops, dim=1), y)], "cpu")
    assert pre_cropped == pytest.approx(metrics)
    with pytest.raises(ValueError, match=r"loader yielded no samples"):
        evaluate_classifier(model, [], "cpu")
