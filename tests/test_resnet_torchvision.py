"""Our ResNets with converted torchvision weights give torchvision's logits and stage features, parameter counts
and the papers' MACs."""
import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import resbackbones as rb
from resbackbones.utils import count_macs, count_parameters

TV_STAGES = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}


def _randomize_bn(model: torch.nn.Module) -> None:
    # Default BN stats (mean 0, var 1, gamma 1, beta 0) would hide a norm loaded into the wrong conv.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


@pytest.mark.parametrize(
    "arch,size",
    [("resnet18", 224), ("resnet34", 64), ("resnet50", 64), ("resnet101", 64), ("resnet152", 64),
     ("resnext50_32x4d", 64), ("wide_resnet50_2", 32)],
)
def test_same_logits_and_stage_features_as_torchvision(arch, size):
    tv = getattr(torchvision.models, arch)()
    _randomize_bn(tv)
    tv.eval()
    ours = rb.build_classifier(arch, out_features=("res2", "res3", "res4", "res5", "logits")).eval()
    ours.load_state_dict(rb.weights.from_torchvision(tv.state_dict()))
    assert count_parameters(ours) == count_parameters(tv)

    images = torch.randn(1, 3, size, size)
    extractor = create_feature_extractor(tv, return_nodes={**{k: k for k in TV_STAGES}, "fc": "fc"})
    with torch.no_grad():
        expected = extractor(images)
        got = ours(images)
    for tv_name, name in TV_STAGES.items():
        diff = (got[name] - expected[tv_name]).abs().max().item()
        assert diff <= 1e-5, f"{arch} {name}: max abs diff {diff:.3g} vs torchvision {tv_name}"
    diff = (got["logits"] - expected["fc"]).abs().max().item()
    assert diff <= 1e-5, f"{arch} logits: max abs diff {diff:.3g}"


@pytest.mark.parametrize("arch,gmacs", [("resnet50", 4.1), ("resnet101", 7.8), ("resnet152", 11.5)])
def test_macs_at_224_match_the_paper(arch, gmacs):
    with torch.device("meta"):  # FlopCounterMode needs only shapes: no weights to initialise, no data to compute
        model = rb.build_classifier(arch)
    macs = count_macs(model) / 1e9
    assert abs(macs - gmacs) / gmacs < 0.02, f"{arch}: {macs:.3f} GMACs, expected ~{gmacs}"


def test_plain_twins_have_the_resnet_convs_but_no_shortcuts():
    for depth in (18, 34, 50, 101, 152):
        with torch.device("meta"):  # structure and parameter counts only
            resnet = rb.build_backbone(f"resnet{depth}")
            plain = rb.build_backbone(f"plain{depth}")
        shortcut_params = sum(p.numel() for n, p in resnet.named_parameters() if ".shortcut." in n)
        assert not any(".shortcut" in n for n in plain.state_dict()), f"plain{depth} has shortcut weights"
        assert count_parameters(plain) == count_parameters(resnet) - shortcut_params
        assert all(not block.residual for stage in list(plain.stages.values())[1:] for block in stage)
