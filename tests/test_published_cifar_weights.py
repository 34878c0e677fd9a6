"""The committed CIFAR-10 weights (projects/degradation/publish.py) rebuild themselves from their metadata alone
and reproduce the accuracy they state, and the paper's claims hold on the numbers they carry.

Each file is read through the public API only: rb.weights.load_with_metadata -> WeightsMetadata ->
rb.build_classifier(meta.arch, num_classes=meta.num_classes), images normalised with meta.pixel_mean/pixel_std.
The check runs on the fixed 500-image test subset recorded in the file (every 20th image of test.tar in ImageFolder
order), in fp32 eval mode, and must give the stored test500_top1 up to one image (float summation order differs
between CPUs, which can flip a borderline prediction).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, require_shared

import resbackbones as rb
from resbackbones.data import ImageFolderDataset

DEGRADATION = REPO / "projects" / "degradation" / "results" / "checkpoints"
# Every published file; a new one is added here when it is committed.
PUBLISHED = {
    "readme/resnet20": REPO / "docs" / "results" / "cifar_resnet20" / "resnet20.safetensors",
    "degradation/resnet20": DEGRADATION / "resnet20.safetensors",
    "degradation/plain20": DEGRADATION / "plain20.safetensors",
    "degradation/resnet56": DEGRADATION / "resnet56.safetensors",
    "degradation/plain56": DEGRADATION / "plain56.safetensors",
}
SUBSET = range(0, 10000, 20)
ONE_IMAGE = 100.0 / len(SUBSET)


@pytest.fixture(scope="module")
def test_subset():
    """RGB images in 0-1 [500, 3, 32, 32] float32 and labels [500] of the fixed subset."""
    dataset = ImageFolderDataset(require_shared("data/cifar10/test.tar"))
    assert len(dataset) == 10000
    images = np.stack([dataset[i][0] for i in SUBSET])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return x, torch.tensor([dataset.targets[i] for i in SUBSET])


def _rebuild(path: Path):
    state, raw = rb.weights.load_with_metadata(path)
    meta = rb.weights.WeightsMetadata.from_dict(raw)
    assert meta is not None, f"{path} has no rb.* metadata"
    assert meta.num_classes == 10 and meta.input_format == "RGB" and meta.pixel_scale == 1.0
    model = rb.build_classifier(meta.arch, num_classes=meta.num_classes)
    model.load_state_dict(state)  # strict: the file holds exactly this model's tensors
    return model.eval(), meta, raw


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_weights_reproduce_their_accuracy(name, test_subset):
    model, meta, raw = _rebuild(PUBLISHED[name])
    x, y = test_subset
    mean = torch.tensor(meta.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.pixel_std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model((x - mean) / std)
    top1 = 100.0 * (logits.argmax(1) == y).float().mean().item()
    assert raw["test500_count"] == str(len(SUBSET))
    assert abs(top1 - float(raw["test500_top1"])) <= ONE_IMAGE + 1e-6, (name, top1, raw["test500_top1"])
    # The full-test-set number it states is consistent with the subset (500 of the 10,000 images).
    assert abs(float(raw["test_top1"]) - top1) < 5.0
    assert raw["test_count"] == "10000" and raw["train_count"] == "50000"


def test_degradation_claims_hold_on_the_committed_checkpoints():
    """The paper's CIFAR-10 claims (Fig. 6, Table 6), on the numbers each committed checkpoint states (eval mode,
    no augmentation, all 50,000 train / 10,000 test images; the subset test above keeps those numbers honest)."""
    top1 = {}
    for name in ("plain20", "plain56", "resnet20", "resnet56"):
        _, raw = rb.weights.load_with_metadata(DEGRADATION / f"{name}.safetensors")
        top1[name] = (float(raw["train_top1"]), float(raw["test_top1"]))
        assert raw["epochs"] == "20" and raw["iterations"] == "7800", name  # one protocol for the four
    train_err = {name: 100.0 - v[0] for name, v in top1.items()}
    test_err = {name: 100.0 - v[1] for name, v in top1.items()}
    assert train_err["plain56"] > train_err["plain20"]    # degradation: the deeper plain net trains worse
    assert train_err["resnet56"] < train_err["resnet20"]  # shortcuts: the deeper ResNet trains better
    assert test_err["resnet56"] < test_err["resnet20"]    # ... and generalises better
