"""tools/convert_weights.py checks what it records (issue 16): --arch must agree with the weights (a wrong one used to
be written into the metadata), and integer (quantized or corrupted) weights are refused instead of cast silently."""

import pytest
import torch
import torchvision

from conftest import REPO, require_shared
from resbackbones.weights import WeightsError, convert
import convert_weights  # noqa: E402


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_arch_must_match_the_weights(r18, tmp_path, capsys):
    assert convert("torchvision", r18, arch="resnet18")[1].arch == "resnet18"
    assert convert("torchvision", r18)[1].arch == "resnet18"  # inferred
    with pytest.raises(WeightsError, match="holds resnet18 weights but --arch is resnet50"):
        convert("torchvision", r18, arch="resnet50")
    assert convert_weights.main(["--from", "torchvision", "--arch", "resnet34", str(r18), str(tmp_path / "x.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --arch resnet18" in err and not (tmp_path / "x.st").exists()


def test_cifar_option_a_resnet_is_not_its_plain_twin_by_mistake():
    th = require_shared("weights/cifar10") / "resnet20-12fca82f.th"
    assert convert("cifar", th, arch="cifar_resnet20")[1].arch == "cifar_resnet20"
    with pytest.raises(WeightsError, match="--arch is cifar_resnet56"):
        convert("cifar", th, arch="cifar_resnet56")


def test_integer_weights_are_refused(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(torch.int8)
    torch.save(state, tmp_path / "q.pth")
    with pytest.raises(WeightsError, match=r"conv1.weight is torch.int8, weights are floating point"):
        convert("torchvision", tmp_path / "q.pth")
