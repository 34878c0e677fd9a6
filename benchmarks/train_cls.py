#!/usr/bin/env python
"""Classification training throughput, ours vs a plain torchvision loop, in one run on the same inputs.

1. Training images/s over the same CIFAR-10 images, same ResNet-18 architecture, batch, optimizer and workers:
   ours  = ClsTrainer, one epoch (cv2 decode + albumentations pad/crop/flip + rb.build_classifier("resnet18"),
           train.amp auto: bf16 autocast on CPUs with native bf16, the row says which)
   ref   = PIL decode + torchvision.transforms.v2 (RandomCrop(32, padding=4), flip, normalise) +
           torchvision.models.resnet18 in a hand-written SGD loop.
2. Data pipeline images/s in one process (no model): decode + augment + normalise to a CHW float tensor,
   CIFAR recipe on the CIFAR JPEGs (32x32) and ImageNet recipe (RandomResizedCrop 224 + flip; eval resize 256 +
   center crop 224) on the COCO sample JPEGs (~640x480).
Each figure is the median of --repeats runs after a warm-up, ours and the reference alternating.

    python benchmarks/train_cls.py [--threads 1] [--images 512] [--repeats 3]
"""
import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from resbackbones.config import from_dict  # noqa: E402
from resbackbones.data.cls_transforms import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD,  # noqa: E402
                                              build_cls_transform)
from resbackbones.config.cls import ClsConfig  # noqa: E402
from resbackbones.data.folders import ImageFolderDataset, decode_image  # noqa: E402
from resbackbones.engine.cls_trainer import ClsTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


class PilTarDataset(torch.utils.data.Dataset):
    """The reference: the same tar members, decoded by PIL, torchvision v2 transforms."""

    def __init__(self, base: ImageFolderDataset, indices, transform):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        offset, size = self.base._offsets[index]
        image = Image.open(io.BytesIO(self.base._tar.read(offset, size))).convert("RGB")
        return self.transform(image), self.base.samples[index][1]


def tv_cifar_train():
    return v2.Compose([v2.PILToTensor(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR_MEAN, CIFAR_STD)])


def reference_epoch(dataset, *, batch_size, workers, lr=0.1):
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True)
    model.train()
    start, seen = time.perf_counter(), 0
    for images, targets in loader:
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += targets.numel()
    return seen / (time.perf_counter() - start)


def ours_epoch(args, out):
    cfg = from_dict(ClsConfig, {
        "model": {"backbone": {"name": "resnet18"}},
        "data": {"root": str(SHARED / "cifar10"), "train_subset": args.images, "val_subset": 10,
                 "num_workers": args.workers},
        "solver": {"batch_size": args.batch_size, "epochs": 1, "schedule": "constant", "warmup": 0},
        "train": {"output_dir": str(out), "progress": False, "tensorboard": False, "device": "cpu"},
    })
    trainer = ClsTrainer(cfg)
    # One epoch on the one loop; its row's images_per_s excludes the epoch-end evaluation.
    trainer.train(trainer.data_iter(), trainer.iters_per_epoch)
    stats = trainer.epochs_hook.last_row
    return stats["images_per_s"], trainer.amp  # train.amp auto: bf16 on CPUs with native bf16


def pipeline_rate(fn, items, repeats):
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/bench_train_cls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {describe()}")
    print(f"ResNet-18, batch {args.batch_size}, {args.images} CIFAR images, {args.workers} worker(s)")
    rows = []

    # 1. training throughput
    base = ImageFolderDataset(SHARED / "cifar10" / "train.tar")
    indices = sorted(np.random.default_rng(0).permutation(len(base))[:args.images].tolist())
    ref_set = PilTarDataset(base, indices, tv_cifar_train())
    _, amp = ours_epoch(args, args.out)  # warm-up (also builds the tar index cache in the page cache)
    reference_epoch(ref_set, batch_size=args.batch_size, workers=args.workers)
    ours, ref = [], []
    for _ in range(args.repeats):
        ours.append(ours_epoch(args, args.out)[0])
        ref.append(reference_epoch(ref_set, batch_size=args.batch_size, workers=args.workers))
    rows.append((f"train ResNet-18, CIFAR recipe, ours amp={amp} (img/s)", statistics.median(ours),
                 statistics.median(ref)))

    # 2. data pipelines, one process
    cifar_bytes = [base._tar.read(*base._offsets[i]) for i in indices[:256]]
    coco = sorted((SHARED / "coco_sample" / "images").glob("*.jpg"))[:32]
    coco_bytes = [p.read_bytes() for p in coco]
    ours_cifar = build_cls_transform("cifar", train=True, crop_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    ours_in_train = build_cls_transform("imagenet", train=True, crop_size=224)
    ours_in_eval = build_cls_transform("imagenet", train=False, crop_size=224, resize_size=256)
    tv_in_train = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    tv_in_eval = v2.Compose([v2.PILToTensor(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                             v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    counter = iter(range(10 ** 9))

    def ours_fn(transform):
        def run(data):
            transform.reseed(next(counter))
            return transform(decode_image(data, name="bench"))
        return run

    def tv_fn(transform):
        return lambda data: transform(Image.open(io.BytesIO(data)).convert("RGB"))

    for name, items, mine, theirs in (
        ("data: CIFAR train recipe, 32x32 JPEG (img/s)", cifar_bytes, ours_fn(ours_cifar), tv_fn(tv_cifar_train())),
        ("data: ImageNet train recipe, COCO JPEG (img/s)", coco_bytes, ours_fn(ours_in_train), tv_fn(tv_in_train)),
        ("data: ImageNet eval recipe, COCO JPEG (img/s)", coco_bytes, ours_fn(ours_in_eval), tv_fn(tv_in_eval)),
    ):
        pipeline_rate(mine, items[:8], 1)
        pipeline_rate(theirs, items[:8], 1)
        rows.append((name, pipeline_rate(mine, items, args.repeats), pipeline_rate(theirs, items, args.repeats)))

    print()
    print(f"| {'measure':<48} | {'ours':>8} | {'reference':>9} | {'ours/ref':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for name, mine, theirs in rows:
        print(f"| {name:<48} | {mine:>8.1f} | {theirs:>9.1f} | {mine / theirs:>7.2f}x |")


if __name__ == "__main__":
    main()
