"""2-process DDP (torchrun, gloo, CPU) matches single-process training on the same global batch.

BatchNorm would not match: each rank normalises with its own half-batch statistics (SyncBN, which would make
them global, runs only on GPUs in PyTorch). The model therefore uses GroupNorm (norm: GN), whose output does not
depend on the batch, so the only difference left is the order of floating-point sums in the gradient all-reduce.
Data order and augmentation depend only on (seed, epoch, sample index): rank r of 2 gets samples r, r+2, ... of
the same permutation, so the two ranks' half-batches together are exactly the single-process batch.
Both runs are fp32 (train.amp=none): under bf16 autocast the two half-batches round differently from one batch.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from resbackbones.data.synthetic_cls import write_image_folder

TOOL = str(REPO / "tools" / "train_cls.py")
COMMON = ["--epochs", "2", "--batch-size", "16", "--workers", "0", "--device", "cpu", "model.backbone.name=cifar_resnet",
          "model.backbone.options={depth: 8, widths: [8, 8, 16], norm: GN}", "train.progress=false",
          "train.tensorboard=false", "solver.base_lr=0.05", "train.amp=none"]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("syn") / "shapes", train_per_class=12, val_per_class=3)


def test_two_process_gloo_matches_single_process(data, tmp_path):
    single = subprocess.run([sys.executable, TOOL, "--data", str(data), "--output", str(tmp_path / "single"), *COMMON],
                            capture_output=True, text=True, env=env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TOOL,
         "--data", str(data), "--output", str(tmp_path / "ddp"), *COMMON],
        capture_output=True, text=True, env=env(), timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "(2 process(es))" in ddp.stdout

    ref = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert ref["global_iter"] == got["global_iter"] == 14
    worst = 0.0
    for key, value in ref["model"].items():
        assert torch.allclose(value, got["model"][key], rtol=1e-4, atol=1e-5), key
        worst = max(worst, (value.float() - got["model"][key].float()).abs().max().item())
    print(f"max |single - ddp| over all weights after 14 steps: {worst:.2e}")

    ref_rows = list(csv.DictReader(open(tmp_path / "single" / "metrics.csv")))
    got_rows = list(csv.DictReader(open(tmp_path / "ddp" / "metrics.csv")))
    for a, b in zip(ref_rows, got_rows):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-4
        assert a["train_top1"] == b["train_top1"]
        # The val set is sharded over the ranks and the sums all-reduced: the same 30 images are counted once.
        assert abs(float(a["val_loss"]) - float(b["val_loss"])) < 1e-4
    # Only rank 0 writes: a single set of output files (and the writer lock), no per-rank duplicates.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        [".lock", "checkpoints", "config.yaml", "curves.png", "metrics.csv", "metrics.jsonl"])
