#!/usr/bin/env python
"""The study's CPU budget from measured step costs (measure_costs.py output), as the README's markdown table.

    python projects/transfer/budget.py results/step_costs.csv --epochs 10 --det-iters 1000

Per backbone: pretraining = epochs x train images x s/image + the final top-1 over the test images (forward only);
per fine-tune run: iterations x s/step (evaluation not included: a few minutes per run, see README). Core-hours are
at the measured thread count (1); "chain" is TR_JOBS=2's split (the first backbone alone, the others together), so
the wall time on two free cores is the longer chain.
"""
import argparse
import csv
import sys
from pathlib import Path

DET_RUNS = {"bccd": ("vgg16", "resnet50", "resnet101"), "dsb": ("resnet50",)}


def read_costs(path: Path) -> dict:
    """name -> row, from one or more concatenated measure_costs.py outputs (repeated headers skipped)."""
    rows = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["what"] != "what":
                rows[row["name"]] = row
    return rows


def plan(costs: dict, *, backbones, px: int, epochs: int, train_images: int, test_images: int, det_iters: int):
    """[(chain, step, s/unit, units, seconds)] for every step run.sh takes with these settings."""
    steps = []
    for index, backbone in enumerate(backbones):
        chain = 1 if index == 0 else 2
        row = costs.get(f"{backbone}@{px}px")
        if row is None:
            raise KeyError(f"no pretraining cost for {backbone}@{px}px in the costs file")
        per_image = float(row["s_per_image"])
        steps.append((chain, f"pretrain {backbone} {px} px, {epochs} ep x {train_images} img", per_image,
                      epochs * train_images, epochs * train_images * per_image))
        infer = float(row["infer_s_per_image"])
        steps.append((chain, f"top-1 {backbone} ({test_images} test images)", infer, test_images, test_images * infer))
        for dataset, dataset_backbones in DET_RUNS.items():
            if backbone not in dataset_backbones:
                continue
            for init in ("pretrained", "scratch"):
                det = costs.get(f"{dataset}_{backbone}[{init}]")
                if det is None:
                    raise KeyError(f"no fine-tune cost for {dataset}_{backbone}[{init}] in the costs file")
                per_step = float(det["s_per_step"])
                steps.append((chain, f"fine-tune {dataset} {backbone} {init}", per_step, det_iters, det_iters * per_step))
    return steps


def table(steps, loads) -> str:
    lines = ["| chain | step | s per image / iteration (1 thread) | images / iterations | core-hours |",
             "|---|---|---|---|---|"]
    for chain, name, per_unit, units, seconds in steps:
        lines.append(f"| {chain} | {name} | {per_unit:.4f} | {units:,} | {seconds / 3600:.2f} |")
    total = sum(s[-1] for s in steps)
    chains = {c: sum(s[-1] for s in steps if s[0] == c) for c in (1, 2)}
    lines.append(f"| | **total** | | | **{total / 3600:.1f}** |")
    lines.append(f"\nTR_JOBS=2 on two free cores: chain 1 {chains[1] / 3600:.1f} h, chain 2 {chains[2] / 3600:.1f} h "
                 f"-> about {max(chains.values()) / 3600:.1f} h wall (+ evaluations); one chain after the other "
                 f"(TR_JOBS=1, 1 thread): {total / 3600:.1f} h. Machine load (1-min average) while measuring: "
                 f"{min(loads):.1f}-{max(loads):.1f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("costs", help="CSV written by measure_costs.py (cls and det outputs concatenated)")
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50", "resnet101"])
    parser.add_argument("--px", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--det-iters", type=int, default=1000)
    args = parser.parse_args(argv)
    path = Path(args.costs)
    if not path.is_file():
        print(f"error: costs file {path} not found (write it with measure_costs.py)", file=sys.stderr)
        return 2
    costs = read_costs(path)
    try:
        steps = plan(costs, backbones=args.backbones, px=args.px, epochs=args.epochs, train_images=args.train_images,
                     test_images=args.test_images, det_iters=args.det_iters)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    print(table(steps, [float(r["load_1min"]) for r in costs.values()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
