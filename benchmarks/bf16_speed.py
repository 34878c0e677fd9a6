#!/usr/bin/env python
"""Issue 24's speed question: how much of bf16's train-step speed-up `train.amp: auto` keeps on the bf16 study's
detectors, measured through DetTrainer's own step on the study's real data.

For each study detector (benchmarks/bf16_accuracy/{bccd,dsb2018,quickstart}.yaml, recipe scratch_gn) three trainers
are built with the same seed: train.amp=none (fp32), train.amp=auto (what users get) and train.amp=bf16 (plain bf16
autocast with the library's fp32 hand-offs, forced even where the hardware has no native bf16). Each round runs
--steps training steps of each, round-robin, after one warm-up round; the figure is the median seconds per step.

- "auto vs fp32" is the speed-up users get from the default;
- "bf16 vs fp32" is what bf16 itself gives on this machine (on CPUs without amx_bf16 / avx512_bf16 PyTorch's bf16
  convolutions convert and compute through slow paths: this is why auto picks fp32 there);
- "kept" = (auto vs fp32) / (bf16 vs fp32) where bf16 is faster than fp32: the share of bf16's speed-up that auto
  keeps (issue 24: at least 80 %). Where bf16 is slower than fp32 there is no speed-up to keep, and auto's choice of
  fp32 is what avoids the slow-down.

    python benchmarks/bf16_speed.py                                  # the three detectors, this machine
    python benchmarks/bf16_speed.py --datasets quickstart --steps 2  # one detector, quicker
    python benchmarks/bf16_speed.py --device cuda --steps 20 --repeats 5

Writes the table to stdout and to --out (default benchmarks/results/bf16_speed.md; the machine line names the CPU).
BCCD and DSB2018 need ../shared/data; detectors whose data is absent are skipped with a line saying so.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backbone import _timed_rounds  # noqa: E402
from machine import describe  # noqa: E402
from mixed_precision import _synced  # noqa: E402
from resbackbones.config import load_config  # noqa: E402
from resbackbones.config.det import DetTrainConfig  # noqa: E402
from resbackbones.engine.det_trainer import DetTrainer  # noqa: E402
from resbackbones.io.outputs import write_text_atomic  # noqa: E402
from resbackbones.utils.amp import resolve_amp, resolve_device  # noqa: E402

STUDY = ROOT / "benchmarks" / "bf16_accuracy"
DATASETS = {"bccd": "BCCD Faster R-CNN R50-GN-FPN, 160 px", "dsb2018": "DSB2018 Mask R-CNN R50-GN-FPN, 256 px",
            "quickstart": "quickstart Mask R-CNN R18-GN-FPN, 128 px"}
MODES = ("none", "auto", "bf16")


def build(dataset: str, amp: str, device: torch.device, threads: int, folder: Path) -> DetTrainer:
    cfg = load_config(DetTrainConfig, STUDY / f"{dataset}.yaml", [
        f"train.output_dir={folder}", f"train.amp={amp}", f"train.device={device}", f"train.num_threads={threads}",
        "train.seed=0", "solver.warmup=0"])
    return DetTrainer(cfg)


def time_dataset(dataset: str, device: torch.device, args) -> dict:
    """Median seconds per training step of each mode, and what auto resolved to."""
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {m: build(dataset, m, device, args.threads, Path(scratch) / m) for m in MODES}
        steps = {m: args.steps if m != "bf16" or args.bf16_native else args.slow_bf16_steps for m in MODES}

        def run(mode):
            trainer, stream = trainers[mode], trainers[mode].data_iter()
            return _synced(lambda: trainer.train(stream, trainer.iter + steps[mode]), device)

        # warm-up round: allocator, oneDNN / cuDNN kernel choice, the image cache
        seconds = _timed_rounds({m: run(m) for m in MODES}, warmup=1, repeats=args.repeats)
        return {"auto_is": trainers["auto"].amp, "seconds": {m: seconds[m] / steps[m] for m in MODES}}


def table(results: dict, machine: str, args) -> str:
    lines = ["# amp=auto train-step speed on the bf16 study's detectors (issue 24)", "",
             f"machine: {machine}", "",
             f"`python benchmarks/bf16_speed.py` ({args.steps} steps per round, median of {args.repeats} round-robin "
             f"rounds after a warm-up round; batch 2, the study's configs, recipe scratch_gn, DetTrainer's own step)."
             + ("" if args.bf16_native else f" bf16 is not native here: its row times {args.slow_bf16_steps} "
                                             f"step(s) per round."), "",
             "| detector | fp32 s/step | auto s/step (auto =) | bf16 s/step | auto vs fp32 | bf16 vs fp32 | kept |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for dataset, r in results.items():
        s = r["seconds"]
        auto_up, bf16_up = s["none"] / s["auto"], s["none"] / s["bf16"]
        kept = (f"{auto_up / bf16_up:.0%}" if bf16_up > 1 else
                "no speed-up to keep (bf16 slower than fp32 here)")
        lines.append(f"| {DATASETS[dataset]} | {s['none']:.3f} | {s['auto']:.3f} ({r['auto_is']}) | {s['bf16']:.3f} "
                     f"| {auto_up:.2f}x | {bf16_up:.2f}x | {kept} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma list of " + ", ".join(DATASETS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=4, help="training steps per mode per round")
    parser.add_argument("--slow-bf16-steps", type=int, default=1,
                        help="steps per round of forced bf16 where it is not native (10-40x slower there)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bf16_speed.md")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or any(n < 1 for n in (args.steps, args.slow_bf16_steps, args.repeats)):
        print(f"error: --datasets: unknown {', '.join(unknown)} (choose from {', '.join(DATASETS)})" if unknown else
              "error: --steps, --slow-bf16-steps and --repeats must be >= 1", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)  # the trainers set the same; describe() reports it
    auto, reason = resolve_amp("auto", device)
    args.bf16_native = auto == "bf16"
    machine = describe(device)
    print(f"machine: {machine}\namp=auto -> {auto} ({reason})", flush=True)
    results = {}
    for dataset in datasets:
        try:
            results[dataset] = time_dataset(dataset, device, args)
        except FileNotFoundError as missing:  # BCCD / DSB2018 live in ../shared/data
            print(f"{dataset}: skipped, its data is absent ({missing})", flush=True)
            continue
        print(f"{dataset}: {results[dataset]}", flush=True)
    text = table(results, machine, args)
    print("\n" + text)
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
