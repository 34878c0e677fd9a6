"""The backbone registry is complete as soon as any part of the package is imported: the families register when
resbackbones.backbones is imported, with no lazy import behind list_backbones() / build_backbone()."""
import json
import subprocess
import sys

import resbackbones as rb
from conftest import REPO

FAMILIES = {"resnet", "plain", "resnext", "cifar_resnet", "cifar_plain", "vgg"}


def test_fresh_interpreter_lists_every_family():
    code = ("import json, resbackbones.backbones.registry as r; "
            "print(json.dumps([[n, r.get_entry(n).family] for n in r.list_backbones()]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {family for _, family in listed} == FAMILIES
    assert [name for name, _ in listed] == rb.list_backbones()
    # README's order: ResNet-like families first, then CIFAR, then VGG.
    assert listed[0][0] == "resnet18" and listed[-1][1] == "vgg"
