#!/usr/bin/env python
"""bf16 where the hardware has it (issue 14's rows): ours at amp=auto vs torchvision's plain fp32, in one run.

1. Mask R-CNN R50-FPN, 2 images HxW (default 512x640), same weights: one training step (forward + backward + SGD)
   and inference; ours = rb.build_detector with amp=auto (bf16 autocast where native + channels_last batch, float32
   box maths: detection/fp32_outputs.py) vs torchvision's maskrcnn_resnet50_fpn fp32 eager (NCHW).
2. Classification training at 224 px, ResNet-18 and ResNet-50, batch B:
   - "train step": one SGD step on an in-memory batch; ours = rb.build_classifier, channels_last, autocast at
     amp=auto vs torchvision's model, fp32 NCHW, the same loop otherwise;
   - "train epoch" (--cls-epochs): one ClsTrainer epoch at amp=auto + channels_last (its data pipeline: cv2 +
     albumentations RandomResizedCrop/flip over synthetic 256-px PNGs) vs a plain torchvision fp32 loop over the
     same dataset, batch and workers.
3. Inference, ResNet-50 (--infer-archs) 224 px batch B: rb.optimize_for_inference (dtype "auto": bf16 where native,
   BN folded, channels_last, fused oneDNN convs on CPU) vs torchvision eager fp32.
Each figure is the median of --repeats interleaved rounds after a warm-up; "speed-up" = reference time / ours.

    python benchmarks/mixed_precision.py                       # CPU defaults (tens of minutes on 2 cores)
    python benchmarks/mixed_precision.py --quick               # tiny sizes, 1 repeat: checks that it runs
    python benchmarks/mixed_precision.py --device cuda --batch 64 --cls-epochs   # GPU rows (gpu_check.sh)
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import resbackbones as rb  # noqa: E402
from resbackbones.utils.amp import autocast, resolve_amp, resolve_device  # noqa: E402
from backbone import _timed_rounds  # noqa: E402
from detection import _inference, _inputs, _models, _train_step  # noqa: E402
from machine import describe  # noqa: E402


def _synced(fn, device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def bench_detection(args, device, amp):
    """Rows (name, ours s, reference s) for the Mask R-CNN train step and inference."""
    size = tuple(args.det_size)
    tv, ours = _models(True, size, device)
    images, targets = _inputs(size, device)
    optimizers = {id(m): torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in (tv, ours)}
    times = {key: [] for key in ("tv train", "ours train", "tv infer", "ours infer")}
    for rep in range(args.repeats + 1):  # repetition 0 warms up (allocator, oneDNN / cuDNN kernel choice)
        for tag, model in (("tv", tv), ("ours", ours)) if rep % 2 == 0 else (("ours", ours), ("tv", tv)):
            with autocast(device, amp if tag == "ours" else "none"):
                t_train = _train_step(model, optimizers[id(model)], images, targets, device)
                t_infer = _inference(model, images, device)
            if rep:
                times[f"{tag} train"].append(t_train)
                times[f"{tag} infer"].append(t_infer)
    med = {k: statistics.median(v) for k, v in times.items()}
    label = f"Mask R-CNN R50-FPN {{}}, 2 images {size[0]}x{size[1]}: ours amp={amp} + channels_last vs tv fp32 eager"
    return [(label.format("train step"), med["ours train"], med["tv train"], "s"),
            (label.format("inference"), med["ours infer"], med["tv infer"], "s")]


def bench_cls_step(args, device, amp, arch):
    """One SGD step on an in-memory 224-px batch: ours (channels_last, autocast) vs torchvision fp32 NCHW."""
    tv = getattr(torchvision.models, arch)().to(device)
    ours = rb.build_classifier(arch).to(device).to(memory_format=torch.channels_last)
    ours.load_state_dict(rb.weights.from_torchvision(tv.state_dict()))
    images = torch.randn(args.batch, 3, 224, 224, device=device)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), device=device)

    def step(model, x, mode):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def run():
            with autocast(device, mode):
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return _synced(run, device)

    med = _timed_rounds({"ours": step(ours, images_cl, amp), "tv": step(tv, images, "none")},
                        warmup=1, repeats=args.repeats)
    name = f"{arch} train step, 224 px bs{args.batch}: ours amp={amp} + channels_last vs tv fp32 loop"
    return [(name, args.batch / med["ours"], args.batch / med["tv"], "img/s")]


def bench_cls_epoch(args, device, arch, out):
    """One ClsTrainer epoch (amp=auto, channels_last) vs a plain torchvision fp32 loop on the same data."""
    from resbackbones.config import from_dict
    from resbackbones.config.cls import ClsConfig
    from resbackbones.engine.cls_trainer import ClsTrainer

    per_class = max(1, -(-args.batch * args.cls_iters // 10))  # 10 synthetic classes
    cfg = from_dict(ClsConfig, {
        "model": {"backbone": {"name": arch}, "channels_last": True},
        "data": {"synthetic": {"train_per_class": per_class, "val_per_class": 1, "image_size": 256},
                 "recipe": "imagenet", "crop_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "num_workers": args.workers},
        # one epoch per timed call: warm-up + repeats
        "solver": {"batch_size": args.batch, "epochs": args.repeats + 1, "schedule": "constant", "warmup": 0},
        "train": {"output_dir": str(out), "progress": False, "tensorboard": False, "device": str(device),
                  "amp": "auto"},
    })
    trainer = ClsTrainer(cfg)
    tv = getattr(torchvision.models, arch)(num_classes=trainer.num_classes).to(device)
    optimizer = torch.optim.SGD(tv.parameters(), lr=1e-4, momentum=0.9)
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")

    def reference_epoch():
        tv.train()
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(tv(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += labels.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen / (time.perf_counter() - start)

    ours, ref = [], []
    for rep in range(args.repeats + 1):
        # One more epoch on the one loop; its row's images_per_s excludes the epoch-end evaluation.
        trainer.train(trainer.data_iter(), trainer.iter + trainer.iters_per_epoch)
        rate_ours = trainer.epochs_hook.last_row["images_per_s"]
        rate_ref = reference_epoch()
        if rep:  # the first epoch of each warms up
            ours.append(rate_ours)
            ref.append(rate_ref)
    name = (f"{arch} train epoch, 224 px bs{args.batch}, {len(trainer.train_set)} images, {args.workers} workers: "
            f"ClsTrainer amp={trainer.amp} + channels_last vs tv fp32 loop")
    return [(name, statistics.median(ours), statistics.median(ref), "img/s")]


def bench_inference(args, device, arch):
    """rb.optimize_for_inference(dtype="auto") vs torchvision eager fp32 (eval, inference_mode)."""
    tv = getattr(torchvision.models, arch)().eval().to(device)
    ours = rb.build_classifier(arch)
    ours.load_state_dict(rb.weights.from_torchvision(tv.state_dict()))
    fast = rb.optimize_for_inference(ours.eval().to(device))  # dtype "auto"
    images = torch.randn(args.batch, 3, 224, 224, device=device)

    def infer(model):
        def run():
            with torch.inference_mode():
                model(images)
        return _synced(run, device)

    med = _timed_rounds({"ours": infer(fast), "tv": infer(tv)}, warmup=2, repeats=args.repeats)
    name = f"{arch} inference, 224 px bs{args.batch}: fast path ({fast.precision}) vs tv eager fp32"
    return [(name, args.batch / med["ours"], args.batch / med["tv"], "img/s")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--det-size", type=int, nargs=2, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8, help="classification / inference batch")
    parser.add_argument("--cls-archs", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--infer-archs", nargs="*", default=["resnet50"])
    parser.add_argument("--cls-epochs", action="store_true", help="also time ClsTrainer epochs (needs albumentations)")
    parser.add_argument("--cls-iters", type=int, default=4, help="iterations per timed epoch")
    parser.add_argument("--workers", type=int, default=1, help="data workers of the epoch rows")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: checks that every row runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.det_size, args.batch, args.cls_iters = 1, [192, 256], 2, 2
        args.cls_archs, args.infer_archs = ["resnet18"], ["resnet18"]
    device = resolve_device(args.device)
    amp, reason = resolve_amp("auto", device)
    print(f"machine: {describe(device)}")
    print(f"amp=auto -> {amp} ({reason}); median of {args.repeats} interleaved rounds after warm-up", flush=True)
    torch.manual_seed(0)
    rows = []
    if not args.skip_detection:
        rows += bench_detection(args, device, amp)
    for arch in args.cls_archs:
        rows += bench_cls_step(args, device, amp, arch)
        if args.cls_epochs:
            with tempfile.TemporaryDirectory() as out:
                rows += bench_cls_epoch(args, device, arch, out)
    for arch in args.infer_archs:
        rows += bench_inference(args, device, arch)
    print(f"\n| {'benchmark':<104} | {'ours':>8} | {'reference':>9} | {'unit':<5} | {'speed-up':>8} |")
    print(f"|{'-' * 106}|{'-' * 10}|{'-' * 11}|{'-' * 7}|{'-' * 10}|")
    for name, mine, ref, unit in rows:
        speedup = ref / mine if unit == "s" else mine / ref
        print(f"| {name:<104} | {mine:>8.3f} | {ref:>9.3f} | {unit:<5} | {speedup:>7.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
