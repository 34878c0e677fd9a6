"""tools/train_cls.py on a slice of real CIFAR-10 learns; its exports and checkpoints load back.

Budget (2 shared CPU cores): a CIFAR ResNet-8 (the paper's 6n+2 family, n=1) on 2,500 train images for
4 short epochs, evaluated on 1,000 test images. Chance is 10 %; the run reaches well above 30 %.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

import resbackbones as rb
from conftest import REPO, require_shared

TOOL = str(REPO / "tools" / "train_cls.py")


def run_tool(*args, timeout=600):
    # One thread per process: on a shared, oversubscribed CPU, OpenMP threads spin-waiting on each other make
    # a 2-thread run several times slower than a 1-thread run.
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cifar = require_shared("data/cifar10/train.tar").parent
    out = tmp_path_factory.mktemp("cifar_run")
    export = out / "backbone.safetensors"
    result = run_tool(
        "--data", cifar, "--output", out, "--epochs", 4, "--batch-size", 64, "--lr", 0.1, "--workers", 1,
        "--device", "cpu", "--export", export,
        "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8}", "data.train_subset=2500", "data.val_subset=1000",
        "solver.schedule=cosine", "solver.warmup=10", "train.progress=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, export, result


def test_loss_falls_and_accuracy_well_above_chance(trained):
    out, _, result = trained
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for column in ("epoch", "train_loss", "train_top1", "val_top1", "val_top5", "lr", "epoch_time_s"):
        assert column in rows[0]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    val_top1 = float(rows[-1]["val_top1"])
    assert val_top1 >= 30.0, (val_top1, result.stdout)
    assert float(rows[-1]["val_top5"]) > val_top1
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())


def test_export_loads_into_build_backbone_strictly(trained):
    _, export, _ = trained
    state, raw = rb.weights.load_with_metadata(export)
    meta = rb.weights.WeightsMetadata.from_dict(raw)
    assert meta.arch == "cifar_resnet" and meta.input_format == "RGB" and meta.num_classes == 10
    backbone = rb.build_backbone(meta.arch, depth=8)
    backbone.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 32, 32)
    features = backbone(x)
    assert set(features) == set(backbone.output_shape())


def test_eval_only_reproduces_best_checkpoint(trained):
    out, _, _ = trained
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    best = max(float(r["val_top1"]) for r in rows)
    cifar = require_shared("data/cifar10/test.tar").parent
    result = run_tool("--eval-only", "--weights", out / "checkpoints" / "best.pt", "--data", cifar,
                      "--output", out / "eval", "--device", "cpu", "--workers", 0,
                      "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8}", "data.val_subset=1000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"top-1 {best:.2f} %" in result.stdout, (best, result.stdout)
