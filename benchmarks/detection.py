#!/usr/bin/env python
"""Detection benchmarks, ours vs the reference in one run, on the same inputs:

1. Faster / Mask R-CNN R50-FPN: one training step (forward + backward + SGD) and inference, ours (rb.build_detector)
   vs torchvision's fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn with the same weights; median of repeats after
   warm-up, runs interleaved so background load hits both alike.
2. COCO bbox evaluation of a large synthetic result set (default 1,000 images / 35,000 boxes): ours (backend "fast")
   vs pycocotools COCOeval (and faster-coco-eval for reference), checking the 12 stats are identical.

    python benchmarks/detection.py [--repeats 3] [--size 320 256] [--images 1000] [--skip-models]
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import resbackbones as rb  # noqa: E402
from resbackbones.detection import DetectorConfig  # noqa: E402
from resbackbones.weights.convert_torchvision import detector_from_torchvision  # noqa: E402
from machine import describe  # noqa: E402


def _models(mask: bool, size, device):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

    h, w = size
    builder = maskrcnn_resnet50_fpn if mask else fasterrcnn_resnet50_fpn
    tv = builder(weights=None, weights_backbone=None, min_size=min(h, w), max_size=max(h, w))
    cfg = DetectorConfig(num_classes=90)
    cfg.backbone.norm, cfg.backbone.freeze_at = "BN", 0  # torchvision's layout without pretrained weights
    cfg.mask_head.enabled = mask
    cfg.input.min_size, cfg.input.max_size = (min(h, w),), max(h, w)
    ours = rb.build_detector(cfg)
    ours.load_state_dict(detector_from_torchvision(tv.state_dict()))
    return tv.to(device), ours.to(device)


def _inputs(size, device, n=2):
    gen = torch.Generator().manual_seed(0)
    h, w = size
    images = [torch.rand(3, h, w, generator=gen).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2], device=device),
                        "masks": masks.to(device)})
    return images, targets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_step(model, optimizer, images, targets, device):
    model.train()
    torch.manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def _inference(model, images, device):
    model.eval()
    _sync(device)
    start = time.perf_counter()
    model(images)
    _sync(device)
    return time.perf_counter() - start


def bench_models(args, device):
    rows = []
    images, targets = _inputs(tuple(args.size), device)
    for mask in (False, True):
        name = "Mask R-CNN R50-FPN" if mask else "Faster R-CNN R50-FPN"
        tv, ours = _models(mask, tuple(args.size), device)
        opts = {id(m): torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in (tv, ours)}
        times = {("train", "tv"): [], ("train", "ours"): [], ("infer", "tv"): [], ("infer", "ours"): []}
        for rep in range(args.repeats + 1):  # repetition 0 is the warm-up
            for tag, model in (("tv", tv), ("ours", ours)) if rep % 2 == 0 else (("ours", ours), ("tv", tv)):
                t_train = _train_step(model, opts[id(model)], images, targets, device)
                t_infer = _inference(model, images, device)
                if rep:
                    times[("train", tag)].append(t_train)
                    times[("infer", tag)].append(t_infer)
        for phase in ("train", "infer"):
            ref, our = statistics.median(times[(phase, "tv")]), statistics.median(times[(phase, "ours")])
            rows.append((f"{name} {'train step' if phase == 'train' else 'inference'}", ref, our, ref / our))
        del tv, ours
    return rows


def bench_eval(args):
    from coco_synthetic import synthetic_coco
    from resbackbones.evaluation.coco import STAT_NAMES, _run

    gt, dets = synthetic_coco(num_images=args.images, dets_per_image=35)
    timings, stats = {}, {}
    for backend in ("pycocotools", "fast", "faster_coco_eval"):
        runs = []
        for _ in range(args.eval_repeats):
            start = time.perf_counter()
            evaluator = _run(gt, copy.deepcopy(dets), "bbox", backend)
            runs.append(time.perf_counter() - start)
        timings[backend] = statistics.median(runs)
        stats[backend] = [float(v) for v in evaluator.stats[: len(STAT_NAMES)]]
    same = {b: stats[b] == stats["pycocotools"] for b in stats}
    rows = [(f"COCO bbox eval, {args.images} images / {len(dets)} boxes: {b}"
             f" (12 stats identical: {'yes' if same[b] else 'NO'})", timings["pycocotools"], timings[b],
             timings["pycocotools"] / timings[b]) for b in ("fast", "faster_coco_eval")]
    return rows, same


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-repeats", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 320], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"machine: {describe(device)}")
    rows = []
    if not args.skip_models:
        rows += bench_models(args, device)
    ok = True
    if not args.skip_eval:
        eval_rows, same = bench_eval(args)
        rows += eval_rows
        ok = same["fast"]
    print(f"\n| {'benchmark':<78} | {'reference s':>11} | {'ours s':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 80}|{'-' * 13}|{'-' * 10}|{'-' * 10}|")
    for name, ref, our, ratio in rows:
        print(f"| {name:<78} | {ref:>11.3f} | {our:>8.3f} | {ratio:>7.2f}x |")
    print("\nreference = torchvision (models) / pycocotools COCOeval (eval); 'ours' column for the eval rows is the "
          "named backend.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
