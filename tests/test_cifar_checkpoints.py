"""The published CIFAR-10 ResNets (akamaster) load through our converter and score what an independent rebuild
measured on the real JPEG test set; the fast inference path gives the same predictions.

Reference accuracies: ../shared/weights/cifar10/SOURCE.md (81.03 / 82.56 / 82.67 / 83.20 % on test.tar, whose
q75 JPEGs cost ~10 points against the published 91.7-93.6 %). Cost: one decode of 10,000 32x32 JPEGs, ResNet-20
eager fp32 + fast fp32 + fast bf16, ResNet-32/44/56 on the fp32 fast path (BN folded; it is checked against the
eager model on ResNet-20 here, and within 1e-4 in general) to keep the file near a minute on 2 cores.
"""
import numpy as np
import pytest
import torch
from conftest import require_shared

import resbackbones as rb
from resbackbones.data import ImageFolderDataset
from resbackbones.utils.amp import cpu_bf16_flags
from resbackbones.evaluation import evaluate_classifier
from resbackbones.weights import WeightsError, load
from resbackbones.weights.convert_cifar import (
    CIFAR_PREPROCESSING,
    PUBLISHED_CHECKPOINTS,
    from_cifar_checkpoint,
    infer_cifar_arch,
)

BATCH = 500
TOLERANCE = 0.5  # percentage points


@pytest.fixture(scope="module")
def cifar_test_set():
    """(images [10000, 3, 32, 32] float32 normalised as the checkpoints expect, targets [10000] int64)."""
    dataset = ImageFolderDataset(require_shared("data/cifar10/test.tar"))
    assert len(dataset) == 10000 and len(dataset.classes) == 10
    images = np.stack([dataset[i][0] for i in range(len(dataset))])  # RGB uint8 [N, 32, 32, 3]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_PREPROCESSING["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_PREPROCESSING["std"]).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    return x, torch.tensor(dataset.targets)


def _batches(data):
    x, y = data
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def _load_published(filename):
    path = require_shared(f"weights/cifar10/{filename}")
    state = load(path)  # torch.load(weights_only=True), unwraps {"state_dict": ...}
    arch, options = infer_cifar_arch(state)
    assert arch == PUBLISHED_CHECKPOINTS[filename]["arch"] and options == {}
    model = rb.build_classifier(arch, num_classes=10)
    model.load_state_dict(from_cifar_checkpoint(state), strict=True)
    return model.eval()


def _predictions(model, data):
    x, _ = data
    with torch.inference_mode():
        return torch.cat([model(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)])


@pytest.fixture(scope="module")
def resnet20_eager(cifar_test_set):
    model = _load_published("resnet20-12fca82f.th")
    return model, _predictions(model, cifar_test_set)


def test_resnet20_eager_accuracy_matches_reference(cifar_test_set, resnet20_eager):
    model, logits = resnet20_eager
    targets = cifar_test_set[1]
    top1 = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    expected = PUBLISHED_CHECKPOINTS["resnet20-12fca82f.th"]["top1_jpeg_q75"]
    print(f"cifar_resnet20 eager top-1 on test.tar: {top1:.2f} % (reference {expected:.2f} %)")
    assert abs(top1 - expected) <= TOLERANCE
    # evaluate_classifier over a small slice gives the same top-1 as counting by hand.
    head = [(cifar_test_set[0][:1000], targets[:1000])]
    metrics = evaluate_classifier(model, head, "cpu")
    assert metrics["count"] == 1000
    assert metrics["top1"] == pytest.approx(100.0 * (logits[:1000].argmax(1) == targets[:1000]).float().mean().item())
    assert metrics["top1"] <= metrics["top5"] <= 100.0 and metrics["loss"] > 0


def test_fast_path_fp32_same_predictions_and_bf16_agrees(cifar_test_set, resnet20_eager):
    model, eager = resnet20_eager
    targets = cifar_test_set[1]
    fast = _predictions(rb.optimize_for_inference(model, dtype=torch.float32), cifar_test_set)
    assert (fast - eager).abs().max().item() <= 1e-3
    differ = fast.argmax(1) != eager.argmax(1)
    # Only exact near-ties (top-2 logits within fp32 folding noise) may flip.
    top2 = eager.topk(2, dim=1).values
    assert (top2[differ, 0] - top2[differ, 1] < 1e-4).all(), f"{int(differ.sum())} fp32 predictions changed"
    eager_top1 = (eager.argmax(1) == targets).float().mean().item()
    fast_top1 = (fast.argmax(1) == targets).float().mean().item()
    assert abs(fast_top1 - eager_top1) <= differ.float().mean().item()

    # Without native bf16 (no avx512_bf16 / amx_bf16: utils.amp.cpu_bf16_flags) bf16 runs PyTorch's slow
    # converting kernels, ~3 minutes for the 10,000 images: the first 2,000 still resolve a 1 % disagreement.
    n = len(targets) if cpu_bf16_flags() else 2000
    bf16 = _predictions(rb.optimize_for_inference(model, dtype=torch.bfloat16), (cifar_test_set[0][:n], None))
    agreement = 100.0 * (bf16.argmax(1) == eager[:n].argmax(1)).float().mean().item()
    bf16_top1 = 100.0 * (bf16.argmax(1) == targets[:n]).float().mean().item()
    print(f"resnet20 fast fp32 top-1 {100 * fast_top1:.2f} %, bf16 top-1 {bf16_top1:.2f} % on {n} images "
          f"(agreement with eager {agreement:.2f} %)")
    assert agreement >= 99.0


@pytest.mark.parametrize("filename", ["resnet32-d509ac18.th", "resnet44-014dd654.th", "resnet56-4bfd9763.th"])
def test_deeper_published_checkpoints_accuracy(cifar_test_set, filename):
    model = _load_published(filename)
    fast = rb.optimize_for_inference(model, dtype=torch.float32)  # the published numbers are fp32
    metrics = evaluate_classifier(fast, _batches(cifar_test_set), "cpu")
    expected = PUBLISHED_CHECKPOINTS[filename]["top1_jpeg_q75"]
    print(f"{filename}: top-1 {metrics['top1']:.2f} % (reference {expected:.2f} %), top-5 {metrics['top5']:.2f} %")
    assert metrics["count"] == 10000
    assert abs(metrics["top1"] - expected) <= TOLERANCE


def test_converter_accepts_raw_checkpoint_and_path_and_rejects_wrong_depth():
    path = require_shared("weights/cifar10/resnet20-12fca82f.th")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) >= {"state_dict", "best_prec1"}
    from_raw = from_cifar_checkpoint(raw)
    from_path = from_cifar_checkpoint(path)
    assert from_raw.keys() == from_path.keys()
    assert not any("shortcut" in k for k in from_raw)  # option A: nothing to convert
    with pytest.raises(WeightsError, match=r"cifar_resnet20 .*not the expected cifar_resnet56"):
        from_cifar_checkpoint(raw, expected_arch="cifar_resnet56")
    # Loading into the wrong depth names the missing keys.
    model = rb.build_classifier("cifar_resnet32", num_classes=10)
    with pytest.raises(WeightsError, match=r"(?s)missing keys .*res2\.3\.conv1\.weight"):
        rb.weights.load_state_dict(model, from_raw, source=str(path))
