#!/usr/bin/env python
"""How close our ResNet-50 forward gets to this machine's fp32 (and bf16) matrix-multiply peak, and how its time
grows with batch size and image size.

1. GEMM peak: torch.mm of two N x N fp32 (bf16) matrices (default 2048), best of several calls, 2 N^3 FLOPs each.
   The bf16 peak over torchvision's eager fp32 GFLOP/s bounds what any bf16 inference path can gain over it.
2. ResNet-50 forward (eval, fp32, eager, and our fast inference path): FLOPs = 2 x MACs from
   resbackbones.utils.flops.count_macs (convolutions + linear, the papers' convention: 4.1 G MACs at 224 px);
   achieved GFLOP/s = FLOPs / median time; the fraction of the GEMM peak says how much the convolutions lose
   to memory traffic, im2col / reorders, and the layers that are not counted (BN, ReLU, pooling, additions).
3. Sweeps (median time per forward, eager fp32): batch 1..8 at 224 px and image size 128..448 at batch 2;
   written as a two-panel PNG (seconds and images/s), with the ideal linear growth for reference.

    python benchmarks/efficiency.py [--repeats 3] [--threads 0] [--png benchmarks/results/efficiency.png] [--json F]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resbackbones as rb  # noqa: E402
from resbackbones.utils.flops import count_macs  # noqa: E402
from machine import describe  # noqa: E402


def median_time(fn, *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_gflops(n: int, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of torch.mm on n x n matrices of `dtype` (best, not median: the peak the hardware can reach)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="batch of the GFLOP/s measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 320, 448])
    parser.add_argument("--size-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--png", default=str(Path(__file__).resolve().parent / "results" / "efficiency.png"))
    parser.add_argument("--json", help="write the numbers as json here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = rb.build_classifier("resnet50").eval()
    fast = rb.optimize_for_inference(model, dtype=torch.float32)
    fast_bf16 = rb.optimize_for_inference(model, dtype=torch.bfloat16)
    macs_224 = count_macs(model, (1, 3, 224, 224))
    peak = gemm_gflops(args.gemm_size, args.repeats)
    peak_bf16 = gemm_gflops(args.gemm_size, args.repeats, torch.bfloat16)

    images = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        eager_s = median_time(lambda: model(images), warmup=args.warmup, repeats=args.repeats)
        fast_s = median_time(lambda: fast(images), warmup=args.warmup, repeats=args.repeats)
        bf16_s = median_time(lambda: fast_bf16(images), warmup=args.warmup, repeats=args.repeats)
    flops = 2 * macs_224 * args.batch
    rows = [
        {"benchmark": f"fp32 GEMM peak (torch.mm {args.gemm_size}^2)", "gflops": peak, "fraction_of_peak": 1.0},
        {"benchmark": f"ResNet-50 forward fp32 eager, batch {args.batch}, 224 px", "gflops": flops / eager_s / 1e9,
         "fraction_of_peak": flops / eager_s / 1e9 / peak, "seconds": eager_s},
        {"benchmark": f"ResNet-50 forward fp32 fast path, batch {args.batch}, 224 px",
         "gflops": flops / fast_s / 1e9, "fraction_of_peak": flops / fast_s / 1e9 / peak, "seconds": fast_s},
        {"benchmark": f"bf16 GEMM peak (torch.mm {args.gemm_size}^2), as a fraction of the fp32 peak",
         "gflops": peak_bf16, "fraction_of_peak": peak_bf16 / peak},
        {"benchmark": f"ResNet-50 forward bf16 fast path, batch {args.batch}, 224 px (vs fp32 peak)",
         "gflops": flops / bf16_s / 1e9, "fraction_of_peak": flops / bf16_s / 1e9 / peak, "seconds": bf16_s,
         "fraction_of_bf16_peak": flops / bf16_s / 1e9 / peak_bf16},
    ]

    batch_times, size_times = [], []
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224)
            batch_times.append(median_time(lambda: model(x), warmup=args.warmup, repeats=args.repeats))
        for size in args.sizes:
            x = torch.randn(args.size_batch, 3, size, size)
            size_times.append(median_time(lambda: model(x), warmup=args.warmup, repeats=args.repeats))

    print(f"machine: {describe()}")
    print(f"ResNet-50: {macs_224 / 1e9:.2f} G MACs per 224 px image; {torch.get_num_threads()} torch threads")
    print(f"| {'measure':<66} | {'GFLOP/s':>8} | {'of GEMM peak':>12} |")
    print(f"|{'-' * 68}|{'-' * 10}|{'-' * 14}|")
    for r in rows:
        print(f"| {r['benchmark']:<66} | {r['gflops']:>8.1f} | {100 * r['fraction_of_peak']:>11.1f}% |")
    eager_gflops = rows[1]["gflops"]
    print(f"\nbf16 fast path: {100 * rows[4]['fraction_of_bf16_peak']:.1f} % of the bf16 GEMM peak; the bf16 peak is "
          f"{peak_bf16 / eager_gflops:.2f}x the eager fp32 forward's GFLOP/s (the most any bf16 path can gain over "
          f"it), the fast path gains {eager_s / bf16_s:.2f}x")
    print("\nbatch sweep (224 px): " + ", ".join(f"bs{b} {t:.3f}s ({b / t:.1f} img/s)"
                                              for b, t in zip(args.batches, batch_times)))
    print(f"size sweep (batch {args.size_batch}): " + ", ".join(f"{s}px {t:.3f}s" for s, t in zip(args.sizes, size_times)))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(args.batches, batch_times, "o-", label="measured")
    left.plot(args.batches, [batch_times[0] * b / args.batches[0] for b in args.batches], "--", label="linear in batch")
    left.set(xlabel="batch size (224 px)", ylabel="seconds per forward", title="ResNet-50 fp32 forward vs batch")
    left.legend()
    pixels = [s * s for s in args.sizes]
    right.plot(args.sizes, size_times, "o-", label="measured")
    right.plot(args.sizes, [size_times[0] * p / pixels[0] for p in pixels], "--", label="linear in pixels")
    right.set(xlabel=f"image side, px (batch {args.size_batch})", ylabel="seconds per forward",
              title="ResNet-50 fp32 forward vs image size")
    right.legend()
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100)
    print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "batches": args.batches, "batch_times": batch_times,
                                               "sizes": args.sizes, "size_times": size_times,
                                               "macs_224": macs_224}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
