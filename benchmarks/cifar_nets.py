#!/usr/bin/env python
"""The four CIFAR degradation nets (plain-20/56, ResNet-20/56) on one device: training images/s, each alone and all
four side by side (one process each, sharing the device), and the time the paper's schedule (64k iterations at
batch 128) would take at that rate. Model step only (random 32x32 batches already on the device, SGD, amp=auto,
channels_last); the data pipeline is not timed.

    python benchmarks/cifar_nets.py --device cuda [--seconds 8] [--batch 128]
    python benchmarks/cifar_nets.py --device cpu --seconds 2 --nets cifar_resnet20    # a CPU smoke run
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import resbackbones as rb  # noqa: E402
from resbackbones.utils.amp import autocast, grad_scaler, resolve_amp, resolve_device  # noqa: E402
from machine import describe  # noqa: E402

NETS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")
PAPER_IMAGES = 64000 * 128  # He et al. 2016, section 4.2: 64k iterations, mini-batch 128


def images_per_second(name: str, device: torch.device, *, batch: int, seconds: float) -> float:
    """Train `name` on random batches for about `seconds` after 5 warm-up steps; images per second."""
    amp, _ = resolve_amp("auto", device)
    model = rb.build_classifier(name, num_classes=10).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = grad_scaler(device, amp)
    images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(5):
        step()
    sync()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        sync()
        steps += 10
    return steps * batch / (time.perf_counter() - start)


def side_by_side(args) -> dict:
    """Every net in its own process at the same time; {name: images/s}."""
    procs = {name: subprocess.Popen([sys.executable, __file__, "--single", name, "--device", args.device,
                                     "--batch", str(args.batch), "--seconds", str(args.seconds)],
                                    stdout=subprocess.PIPE, text=True) for name in args.nets}
    return {name: json.loads(proc.communicate()[0].strip().splitlines()[-1])["images_per_s"]
            for name, proc in procs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # child process of side_by_side
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.single:
        rate = images_per_second(args.single, device, batch=args.batch, seconds=args.seconds)
        print(json.dumps({"images_per_s": rate}))
        return 0
    amp, reason = resolve_amp("auto", device)
    print(f"machine: {describe(device)}")
    print(f"amp=auto -> {amp} ({reason}); batch {args.batch}, random 32x32 inputs, channels_last, "
          f"~{args.seconds:g} s per measurement", flush=True)
    alone = {name: images_per_second(name, device, batch=args.batch, seconds=args.seconds) for name in args.nets}
    together = side_by_side(args) if len(args.nets) > 1 else dict(alone)
    print(f"\n| {'benchmark':<60} | {'alone':>8} | {'side by side':>12} | {'unit':<5} | {'paper schedule':>16} |")
    print(f"|{'-' * 62}|{'-' * 10}|{'-' * 14}|{'-' * 7}|{'-' * 18}|")
    for name in args.nets:
        minutes = PAPER_IMAGES / together[name] / 60
        print(f"| {name + ' train, side by side vs alone':<60} | {alone[name]:>8.0f} | {together[name]:>12.0f} | "
              f"{'img/s':<5} | {minutes:>10.1f} min  |")
    slowest = max(PAPER_IMAGES / together[name] for name in args.nets) / 60
    print(f"\nall {len(args.nets)} side by side would finish the paper's 64k x 128 schedule in ~{slowest:.0f} min "
          f"(projected from the side-by-side rates, model step only, no evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
