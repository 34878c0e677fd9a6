"""bf16 accuracy study (issue 24): the same detector trained in fp32 and in bf16 autocast, grid dataset x recipe x
precision x seed, one tools/train_det.py run per cell, then docs/results/bf16_accuracy/summary.csv.

    python benchmarks/bf16_accuracy.py                               # the whole grid, one run after the other
    python benchmarks/bf16_accuracy.py --datasets bccd --seeds 0     # a slice
    python benchmarks/bf16_accuracy.py --collect                     # only rewrite summary.csv / details.csv
    python benchmarks/bf16_accuracy.py --table                       # summary.csv's means as a markdown table
    python benchmarks/bf16_accuracy.py --dry-run                     # print the cells and their commands

Resumable: a cell whose folder holds a final eval.json is finished and skipped (one marked stopped_early is resumed); a cell whose folder exists without it
continues (train_det --resume: from checkpoints/last.pt, saved every 50 iterations; an empty or checkpoint-less
folder starts over). Kill it at any time and run the same command again. The cells run seed-major (seed 0 of
every dataset x recipe, fp32 then bf16, then seed 1, ...) so the first pairs to finish are comparable.

Cell folder: RUNS/<dataset>_<recipe>_it<iters>[_<tag>]/<precision>_s<seed>/ (the budget is in the name, so a
changed budget never resumes or reuses another budget's run). Every run: train.device=cpu (unless --device),
train.num_threads=1 (--threads), train.amp none (fp32) or bf16 forced (not auto: auto picks fp32 on a CPU without
amx_bf16 / avx512_bf16), test.amp following train.amp (evaluation in the training precision, as a user gets it),
train.seed=<seed>.

Recipes:
  scratch_gn           the dataset config as written (benchmarks/bf16_accuracy/<dataset>.yaml): random init, GN
                       backbone + FPN (+ mask head), AdamW lr 8e-4 wd 0.01, cosine, 50-iteration warm-up, clip 10.
  pretrained_frozenbn  --pretrained PATH (a tools/train_cls.py --export of the dataset's backbone arch: resnet50 for
                       bccd / dsb2018, resnet18 for quickstart), FrozenBN, stem + res2 frozen, SGD lr 0.01 m 0.9
                       wd 1e-4, step at 80 %, 50-iteration warm-up, clip 10 (the transfer study's fine-tune). Without
                       --pretrained the cell is skipped and reported as needing a pretraining.

Outputs (--results, default docs/results/bf16_accuracy/): summary.csv with exactly
dataset,recipe,precision,seed,bbox_AP,segm_AP (finished cells only; AP as fractions 0-1 from eval.json; segm_AP
empty for box-only sets) and details.csv (also iterations, AP50s, training seconds, the last logged losses, the
run folder).  --set KEY=VALUE (repeatable) passes extra overrides to every run (ablations: give a --tag too).
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from resbackbones.io.outputs import write_text_atomic  # noqa: E402

CONFIGS = ROOT / "benchmarks" / "bf16_accuracy"
DEFAULT_RUNS = CONFIGS / "runs"
DEFAULT_RESULTS = ROOT / "docs" / "results" / "bf16_accuracy"

DATASETS = ("bccd", "dsb2018", "quickstart")
RECIPES = ("scratch_gn", "pretrained_frozenbn")
# precision -> train.amp. bf16emu: bf16 autocast with the matrix products emulated in float32
# (benchmarks/bf16_accuracy/emulated_bf16.py), for CPUs without native bf16, where real bf16 convolutions are
# 15-40x slower than fp32; the default picks bf16 where the CPU (or a CUDA GPU) has native bf16, bf16emu elsewhere.
# fp32ctl: the control, fp32 with only the input image rounded to bf16 once (emulated_bf16.RoundImageOnly): how
# far a same-seed twin drifts from a rounding that cannot matter.
PRECISIONS = {"fp32": "none", "bf16": "bf16", "bf16emu": "bf16", "fp32ctl": "none"}
EMULATOR = CONFIGS / "emulated_bf16.py"
# Iterations of 2 images per dataset (measured to give fp32 a non-trivial AP: docs/results/bf16_accuracy/README.md).
ITERS = {"bccd": 300, "dsb2018": 300, "quickstart": 300}
MASKS = {"bccd": False, "dsb2018": True, "quickstart": True}
SUMMARY_COLUMNS = ["dataset", "recipe", "precision", "seed", "bbox_AP", "segm_AP"]
DETAIL_COLUMNS = SUMMARY_COLUMNS + ["bbox_AP50", "segm_AP50", "iterations", "train_seconds", "eval_amp",
                                    "final_loss", "tag", "run"]

PRETRAINED_OVERRIDES = [
    "model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2", "solver.optimizer=sgd", "solver.base_lr=0.01",
    "solver.momentum=0.9", "solver.weight_decay=0.0001", "solver.schedule=step"]


def default_precisions(device: str) -> List[str]:
    """fp32 and bf16 where bf16 is native (CPU flags amx_bf16 / avx512_bf16, or CUDA), else fp32 and bf16emu."""
    if device.startswith("cuda"):
        return ["fp32", "bf16"]
    sys.path.insert(0, str(ROOT))
    from resbackbones.utils.amp import cpu_bf16_flags
    return ["fp32", "bf16" if cpu_bf16_flags() else "bf16emu"]


def csv_list(text: str) -> List[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def cell_dir(runs: Path, dataset: str, recipe: str, precision: str, seed: int, iters: int, tag: str) -> Path:
    group = f"{dataset}_{recipe}_it{iters}" + (f"_{tag}" if tag else "")
    return runs / group / f"{precision}_s{seed}"


def overrides(dataset: str, recipe: str, precision: str, seed: int, iters: int, out: Path,
              args: argparse.Namespace) -> Optional[List[str]]:
    """key=value overrides of one cell (None: the cell cannot run here, e.g. no pretrained export)."""
    ov = [f"train.amp={PRECISIONS[precision]}", "test.amp=null", f"train.seed={seed}",
          f"train.num_threads={args.threads}", f"train.device={args.device}", f"solver.max_iter={iters}",
          ]
    if recipe == "pretrained_frozenbn":
        if not args.pretrained:
            return None
        ov += PRETRAINED_OVERRIDES + [f"model.backbone.weights={args.pretrained}",
                                      f"solver.steps=[{int(iters * 0.8)}]"]
    return ov + list(args.set)


def last_losses(out: Path) -> str:
    """The last metrics.jsonl row's total loss (blank when none)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return ""
    last = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in row or "total_loss" in row:
                last = row
    if last is None:
        return ""
    return f"{last.get('loss', last.get('total_loss')):.4f}"


def write_meta(out: Path, cmd: List[str]) -> None:
    """Append to RUNS/<group>/<cell>.meta.jsonl what this session of the cell ran with: the commit, a hash of the
    uncommitted changes to the library and tools (the working tree may change between cells), CPU, torch."""
    import hashlib
    import platform

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    diff = git("diff", "HEAD", "--", "resbackbones", "tools")
    meta = {"start_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git("rev-parse", "HEAD").strip(),
            "uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else "",
            "cpu": cpu or platform.processor(), "command": cmd}
    with open(out.with_name(out.name + ".meta.jsonl"), "a") as f:
        f.write(json.dumps(meta) + "\n")


def precision_kind(precision: str) -> Optional[str]:
    """The arm of the comparison a cell's precision belongs to: "fp32", "bf16" (native bf16 and its emulation
    bf16emu alike), or None for controls such as fp32ctl."""
    return "fp32" if precision == "fp32" else "bf16" if precision in ("bf16", "bf16emu") else None


def finished(folder: Path) -> bool:
    """A cell is finished when its eval.json is the final one: a run stopped early (time limit, SIGTERM) writes an
    eval.json marked stopped_early and is resumed, not collected."""
    ev = folder / "eval.json"
    if not ev.is_file():
        return False
    try:
        return "stopped_early" not in json.loads(ev.read_text())
    except ValueError:
        return False


def collect(runs: Path, results: Path) -> int:
    """Rewrite summary.csv and details.csv from every finished cell under `runs`; returns the number of rows."""
    rows = []
    for ev in sorted(runs.glob("*/*/eval.json")):
        if not finished(ev.parent):
            continue
        group, cell = ev.parent.parent.name, ev.parent.name
        parts = group.split("_")
        dataset = parts[0]
        it_index = next(i for i, p in enumerate(parts) if p.startswith("it") and p[2:].isdigit())
        recipe = "_".join(parts[1:it_index])
        tag = "_".join(parts[it_index + 1:])
        precision, seed = cell.rsplit("_s", 1)
        data = json.loads(ev.read_text())
        bbox, segm = data.get("bbox", {}), data.get("segm", {})
        fmt = lambda v: "" if v is None else f"{float(v):.4f}"  # noqa: E731
        rows.append({
            "dataset": dataset, "recipe": recipe, "precision": precision, "seed": int(seed),
            "bbox_AP": fmt(bbox.get("AP")), "segm_AP": fmt(segm.get("AP")) if MASKS.get(dataset) else "",
            "bbox_AP50": fmt(bbox.get("AP50")), "segm_AP50": fmt(segm.get("AP50")) if MASKS.get(dataset) else "",
            "iterations": data.get("iteration", ""), "train_seconds": data.get("train_seconds", ""),
            "eval_amp": data.get("amp", ""), "final_loss": last_losses(ev.parent), "tag": tag,
            "run": str(ev.parent.relative_to(ROOT) if ev.parent.is_relative_to(ROOT) else ev.parent)})
    order = {p: i for i, p in enumerate(PRECISIONS)}  # fp32 first
    rows.sort(key=lambda r: (r["tag"], r["dataset"], r["recipe"], r["seed"], order.get(r["precision"], 9)))
    results.mkdir(parents=True, exist_ok=True)
    # summary.csv: the untagged study only (ablations carry a tag and live in details.csv).
    # Atomic: two harness processes (e.g. one per precision) rewrite these after each of their cells.
    for name, columns, selected in (("summary.csv", SUMMARY_COLUMNS, [r for r in rows if not r["tag"]]),
                                     ("details.csv", DETAIL_COLUMNS, rows)):
        text = io.StringIO()
        w = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(selected)
        write_text_atomic(results / name, text.getvalue())
    return len(rows)


def paired_difference(fp32: Dict[int, float], bf16: Dict[int, float], tolerance: float = 0.005):
    """Same-seed differences bf16 - fp32 (a seed fixes the init and the data order for both precisions):
    (mean, 95 % t-interval half-width, seeds a +-tolerance interval would need at this spread), or None with
    fewer than 2 paired seeds. The needed seeds solve t(0.975, n - 1) * sd / sqrt(n) <= tolerance."""
    from scipy import stats  # the t quantiles; scipy comes with albumentations and is in the dev extra

    seeds = sorted(set(fp32) & set(bf16))
    if len(seeds) < 2:
        return None
    diffs = [bf16[s] - fp32[s] for s in seeds]
    n, sd = len(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    needed = next((m for m in range(2, 100_000) if stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) <= tolerance),
                  None)
    return statistics.mean(diffs), half, needed


def means_table(summary: Path, tolerance: float = 0.005) -> str:
    """Markdown: per dataset x recipe, fp32 and bf16 (bf16 or bf16emu) mean AP over seeds with the seeds' range,
    the difference of means, whether it is within `tolerance` (issue 24's must-show: 0.005), the 95 % interval of
    the same-seed differences and how many seeds would resolve `tolerance` at their spread."""
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {}
    for r in rows:
        kind = precision_kind(r["precision"])
        if kind:
            groups.setdefault((r["dataset"], r["recipe"]), {}).setdefault(kind, []).append(r)

    def cell(values):
        return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})" if values else "-"

    lines = ["| dataset | recipe | seeds fp32 / bf16 | metric | fp32 mean (range) | bf16 mean (range) | bf16 - fp32 "
             f"| within {tolerance} | same-seed bf16 - fp32, 95 % CI | seeds for +-{tolerance} |",
             "|---|---|---|---|---|---|---:|---|---|---:|"]
    for (dataset, recipe), by in sorted(groups.items()):
        fp32, bf16 = by.get("fp32", []), by.get("bf16", [])
        for metric in ("bbox_AP", "segm_AP"):
            a = {int(r["seed"]): float(r[metric]) for r in fp32 if r[metric]}
            b = {int(r["seed"]): float(r[metric]) for r in bf16 if r[metric]}
            if not a and not b:
                continue
            diff = statistics.mean(b.values()) - statistics.mean(a.values()) if a and b else None
            paired = paired_difference(a, b, tolerance)
            interval = "-" if paired is None else f"{paired[0]:+.4f} +- {paired[1]:.4f}"
            needed = "-" if paired is None else str(paired[2] or ">100000")
            lines.append(f"| {dataset} | {recipe} | {len(a)} / {len(b)} | {metric.split('_')[0]} "
                         f"| {cell(list(a.values()))} | {cell(list(b.values()))} "
                         f"| {'-' if diff is None else f'{diff:+.4f}'} "
                         f"| {'-' if diff is None else 'yes' if abs(diff) <= tolerance else 'no'} "
                         f"| {interval} | {needed} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=csv_list, default=list(DATASETS))
    p.add_argument("--recipes", type=csv_list, default=list(RECIPES))
    p.add_argument("--precisions", type=csv_list, default=None,
                   help="fp32, bf16, bf16emu, fp32ctl (default: fp32 + bf16 where native, else fp32 + bf16emu)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in csv_list(s)], default=[0, 1, 2])
    p.add_argument("--iters", action="append", default=[], metavar="DATASET=N",
                   help=f"iterations per dataset (default {ITERS}); part of the run folder's name")
    p.add_argument("--pretrained", default=os.environ.get("BF16_PRETRAINED", ""),
                   help="train_cls export for recipe pretrained_frozenbn (none on disk: those cells are skipped)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--tag", default="", help="suffix of the run group (ablations); tagged runs stay out of summary.csv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists()
                   else sys.executable)
    p.add_argument("--collect", action="store_true", help="only rewrite summary.csv / details.csv")
    p.add_argument("--table", action="store_true", help="print summary.csv's means (seed ranges, bf16 - fp32)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if args.table:
        print(means_table(args.results / "summary.csv"), end="")
        return 0

    if args.precisions is None:
        args.precisions = default_precisions(args.device)
    for name, given, known in (("dataset", args.datasets, DATASETS), ("recipe", args.recipes, RECIPES),
                               ("precision", args.precisions, tuple(PRECISIONS))):
        bad = [g for g in given if g not in known]
        if bad:
            p.error(f"unknown {name} {', '.join(bad)}; choose from {', '.join(known)}")
    iters = dict(ITERS)
    for item in args.iters:
        key, _, value = item.partition("=")
        if key not in DATASETS or not value.isdigit():
            p.error(f"--iters takes DATASET=N with DATASET in {', '.join(DATASETS)}, got {item!r}")
        iters[key] = int(value)
    args.runs = args.runs.resolve()

    if args.collect:
        n = collect(args.runs, args.results)
        print(f"{n} finished cells -> {args.results}/summary.csv, details.csv")
        return 0

    cells = [(d, r, pr, s) for s in args.seeds for d in args.datasets for r in args.recipes for pr in args.precisions]
    failed = []
    for dataset, recipe, precision, seed in cells:
        out = cell_dir(args.runs, dataset, recipe, precision, seed, iters[dataset], args.tag)
        name = out.relative_to(args.runs)
        ov = overrides(dataset, recipe, precision, seed, iters[dataset], out, args)
        if ov is None:
            print(f"== {name}: skipped: recipe {recipe} needs a pretrained export (--pretrained PATH from "
                  f"tools/train_cls.py --export); none on disk", flush=True)
            continue
        if finished(out):
            print(f"== {name}: finished (eval.json)", flush=True)
            continue
        resume = out.is_dir() and any(out.iterdir())
        wrapper = [str(EMULATOR)] if precision in ("bf16emu", "fp32ctl") else []
        cmd = [args.python, *wrapper, str(ROOT / "tools" / "train_det.py"), "--config", str(CONFIGS / f"{dataset}.yaml"),
               *ov, "--output", str(out)] + (["--resume"] if resume else [])
        print(f"== {name}: {'resuming' if resume else 'training'}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        write_meta(out, cmd)
        start = time.time()
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   BF16EMU_CONTROL="1" if precision == "fp32ctl" else "0")
        with open(out.with_name(out.name + ".log"), "a") as log:  # beside the folder: train_det wants it empty
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"== {name}: exit {rc} after {time.time() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(str(name))
        collect(args.runs, args.results)
    if not args.dry_run:
        collect(args.runs, args.results)
    if failed:
        print(f"failed cells (see RUNS/<group>/<cell>.log): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
