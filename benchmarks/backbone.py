"""ResNet-50 throughput, ours vs torchvision, in one run on the same inputs and the same weights.

    python benchmarks/backbone.py [--arch resnet50] [--batch 8] [--size 224] [--repeats 10] [--threads N]

Rows: forward fp32 (eval), forward+backward fp32 (train), our fast path (rb.optimize_for_inference, fp32 and
bf16) vs torchvision eager fp32 and vs torchvision's best own setting (channels_last + bf16 autocast).
The variants run round-robin (one call each per round) so that load from other processes hits them alike;
each number is the median over rounds after warm-up. Ratios > 1 mean ours is faster.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resbackbones as rb  # noqa: E402
from machine import describe  # noqa: E402


def _timed_rounds(variants: Dict[str, Callable[[], None]], *, warmup: int, repeats: int) -> Dict[str, float]:
    """Median seconds per call of each variant, measured round-robin."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tv = getattr(torchvision.models, args.arch)()
    ours = rb.build_classifier(args.arch)
    ours.load_state_dict(rb.weights.from_torchvision(tv.state_dict()))
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))

    # -- forward fp32, eval ------------------------------------------------------------------------------------
    tv.eval(), ours.eval()

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    tv_cl = getattr(torchvision.models, args.arch)()
    tv_cl.load_state_dict(tv.state_dict())
    tv_cl = tv_cl.eval().to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def tv_best():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tv_cl(images_cl)

    fast32 = rb.optimize_for_inference(ours, dtype=torch.float32)
    fast16 = rb.optimize_for_inference(ours, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = ours(images)
        err32 = (fast32(images) - ref).abs().max().item()
        agree16 = (fast16(images).argmax(1) == ref.argmax(1)).float().mean().item()
    forward = _timed_rounds(
        {
            "tv eager fp32": no_grad(lambda: tv(images)),
            "ours eager fp32": no_grad(lambda: ours(images)),
            "tv channels_last+bf16 autocast": no_grad(tv_best),
            "ours fast fp32": no_grad(lambda: fast32(images)),
            "ours fast bf16": no_grad(lambda: fast16(images)),
        },
        warmup=args.warmup, repeats=args.repeats,
    )

    # -- forward + backward fp32, train ------------------------------------------------------------------------
    tv.train(), ours.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
        return run

    train = _timed_rounds({"tv fwd+bwd fp32": step(tv), "ours fwd+bwd fp32": step(ours)},
                          warmup=max(1, args.warmup // 2), repeats=max(3, args.repeats // 2))

    ips = {name: args.batch / seconds for name, seconds in {**forward, **train}.items()}
    rows = [
        ("forward fp32 (eval)", "ours eager fp32", "tv eager fp32"),
        ("forward+backward fp32 (train)", "ours fwd+bwd fp32", "tv fwd+bwd fp32"),
        ("fast path fp32 vs tv eager fp32", "ours fast fp32", "tv eager fp32"),
        ("fast path bf16 vs tv eager fp32", "ours fast bf16", "tv eager fp32"),
        ("fast path bf16 vs tv channels_last+bf16 autocast", "ours fast bf16", "tv channels_last+bf16 autocast"),
        ("tv channels_last+bf16 autocast vs tv eager fp32", "tv channels_last+bf16 autocast", "tv eager fp32"),
    ]
    print(f"machine: {describe()}")
    print(f"{args.arch}, batch {args.batch}, {args.size}px, median of {args.repeats} round-robin rounds")
    print(f"fast path check: fp32 max abs diff {err32:.2e}, bf16 top-1 agreement {agree16:.3f}")
    print(f"| {'comparison':<50} | {'ours img/s':>10} | {'ref img/s':>10} | {'ratio':>6} |")
    print(f"|{'-' * 52}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for label, mine, ref_name in rows:
        print(f"| {label:<50} | {ips[mine]:>10.2f} | {ips[ref_name]:>10.2f} | {ips[mine] / ips[ref_name]:>5.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
