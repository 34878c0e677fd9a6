#!/usr/bin/env python
"""Publish a finished CIFAR-10 run of tools/train_cls.py as one .safetensors file that rebuilds itself.

    python projects/degradation/publish.py --run projects/degradation/runs/resnet20 \
        --out projects/degradation/results/checkpoints/resnet20.safetensors

Reads RUN/checkpoints/last.pt (the final weights; never best.pt, which was picked on the test set) and
RUN/metrics.csv, evaluates the model in eval mode, fp32, without augmentation on
  - all 10,000 test images                            -> test_top1
  - all 50,000 training images                        -> train_top1 (the training error the claims use)
  - the fixed 500-image test subset TEST500_INDICES   -> test500_top1 (what the test suite re-checks)
and writes the weights with WeightsMetadata: rb.arch, rb.num_classes, rb.input_format (RGB), rb.pixel_mean /
rb.pixel_std / rb.pixel_scale of the training pipeline (0-1 images), plus the numbers above, the schedule, the
wall time and the CPU as plain keys. Anyone can then do

    state, raw = rb.weights.load_with_metadata(path); meta = rb.weights.WeightsMetadata.from_dict(raw)
    model = rb.build_classifier(meta.arch, num_classes=meta.num_classes); model.load_state_dict(state)
    # normalise 0-1 RGB images with meta.pixel_mean / meta.pixel_std
"""
import argparse
import csv
import json
import platform
import sys
from pathlib import Path
from typing import Dict, Sequence

import torch

import resbackbones as rb
from resbackbones.config.legacy import upgrade
from resbackbones.data.cls_transforms import TransformedDataset, build_cls_transform
from resbackbones.data.folders import ImageFolderDataset, find_split
from resbackbones.engine.checkpoint import load_checkpoint
from resbackbones.utils.amp import cpu_bf16_flags
from resbackbones.evaluation.classification import evaluate_classifier
from resbackbones.weights import WeightsMetadata

# Every 20th image of the test split in ImageFolder order (classes sorted, files sorted): 50 per class.
TEST500_INDICES = range(0, 10000, 20)
TEST500_RULE = "test split in ImageFolder order (classes, then file names, sorted), indices 0, 20, ..., 9980"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def evaluate_split(model: torch.nn.Module, root: Path, split: Sequence[str], mean, std, *,
                   indices=None, batch_size: int = 500) -> Dict[str, float]:
    """Top-1/top-5 (percent) in eval mode, fp32, no augmentation, over `split` (or its `indices`)."""
    base = ImageFolderDataset(find_split(root, split))
    transform = build_cls_transform("cifar", train=False, crop_size=32, mean=mean, std=std)
    if indices is not None:  # a cut-down copy of CIFAR-10 (the tests' tiny folders) has fewer test images
        indices = [i for i in indices if i < len(base)]
    dataset = TransformedDataset(base, transform, indices=indices)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    return evaluate_classifier(model, loader, torch.device("cpu"), autocast_dtype=None, channels_last=True)


def training_record(run: Path) -> Dict[str, str]:
    """Epochs, iterations and summed epoch wall time from RUN/metrics.csv."""
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"error: {run / 'metrics.csv'} has no rows; has the run trained?")
    seconds = sum(float(r["epoch_time_s"]) for r in rows)
    return {"epochs": rows[-1]["epoch"], "iterations": rows[-1]["iter"], "train_wall_s": f"{seconds:.0f}",
            "last_logged_test_top1_amp": rows[-1].get("val_top1", "")}


def publish(run: Path, out: Path, data: Path) -> Dict[str, str]:
    checkpoint = run / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"error: {checkpoint} not found; train the run first")
    state = load_checkpoint(checkpoint)
    cfg = upgrade(state["config"], "cls")[0]  # runs trained before the shared config vocabulary (issue 15)
    arch, num_classes = state["arch"], int(state["num_classes"])
    mean, std = tuple(cfg["data"]["mean"]), tuple(cfg["data"]["std"])
    model = rb.build_classifier(arch, num_classes=num_classes)
    rb.weights.load_state_dict(model, state["model"], source=str(checkpoint))
    model = model.to(memory_format=torch.channels_last).eval()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    test = evaluate_split(model, data, ("test", "val"), mean, std)
    subset = evaluate_split(model, data, ("test", "val"), mean, std, indices=TEST500_INDICES)
    train = evaluate_split(model, data, ("train",), mean, std)
    solver = cfg["solver"]
    extra = {
        "test_top1": f"{test['top1']:.2f}", "test_count": str(test["count"]),
        "train_top1": f"{train['top1']:.2f}", "train_count": str(train["count"]),
        "test500_top1": f"{subset['top1']:.2f}", "test500_count": str(subset["count"]),
        "test500_rule": TEST500_RULE,
        "evaluated": "eval mode, fp32, no augmentation",
        "schedule": json.dumps({k: solver[k] for k in ("batch_size", "base_lr", "epochs", "schedule", "weight_decay",
                                                       "nesterov", "warmup", "warmup_unit", "momentum")}),
        "amp": str(cfg["train"]["amp"]), "cpu": cpu_name(), "cpu_bf16_flags": ",".join(cpu_bf16_flags()),
        "torch": torch.__version__, "data": "CIFAR-10 as JPEG q75 (../shared/data/cifar10)",
        **training_record(run),
    }
    meta = WeightsMetadata(arch=arch, source="resbackbones tools/train_cls.py", input_format="RGB",
                           pixel_mean=mean, pixel_std=std, pixel_scale=1.0, num_classes=num_classes,
                           notes="CIFAR-10 classifier trained from scratch on ../shared/data/cifar10 (JPEG q75); "
                                 "inputs RGB in 0-1, normalised with pixel_mean/pixel_std", extra=extra)
    rb.weights.save(model, out, metadata=meta.to_dict())
    return extra


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="output folder of a tools/train_cls.py run")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/cifar10",
                        help="CIFAR-10 folder with train and test splits (folders or .tar)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    extra = publish(args.run, args.out, args.data)
    print(f"{args.out}: test top-1 {extra['test_top1']} %, train top-1 {extra['train_top1']} % (eval mode), "
          f"500-image subset {extra['test500_top1']} %, {extra['epochs']} epochs in {extra['train_wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
