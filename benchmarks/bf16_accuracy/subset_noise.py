"""How far apart do fp32 and bf16 land on a 13-image val set with one seed, the size of issue 24's report?

Issue 24 measured 0.170 (fp32) vs 0.120 (bf16) box AP with one seed on 13 val images. This re-scores the study's
finished runs (their saved detections, inference/coco_instances_results.json; no model is run) on random
13-image subsets of their val set, the same subsets for every run, and compares:

- bf16 - fp32, same seed, same subset: what one seed on 13 images shows when only the precision changes;
- fp32 - fp32, two seeds, same subset: the control, the same comparison with no precision change at all.

If the control swings as far as the issue's 0.05 (30 % of fp32's AP), one such comparison cannot attribute a gap
to bf16. Scores: evaluation.coco.evaluate_coco (pycocotools' arithmetic, the library's own evaluator), with the
run's max_dets.

    python benchmarks/bf16_accuracy/subset_noise.py [--groups dsb2018_scratch_gn_it300,...] [--images 13]
        [--draws 50] [--out docs/results/bf16_accuracy/subset_noise.csv]
"""
import argparse
import csv
import io
import itertools
import random
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
# the harness, benchmarks/bf16_accuracy.py; appended, not put first: benchmarks/train_cls.py would shadow
# tools/train_cls.py for every test of the process that loads this script
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))
from bf16_accuracy import finished, precision_kind  # noqa: E402
from resbackbones.config import load_yaml_with_bases  # noqa: E402
from resbackbones.data.coco_format import read_coco_json  # noqa: E402
from resbackbones.evaluation.coco import evaluate_coco  # noqa: E402
from resbackbones.evaluation.coco_evaluator import restrict_ground_truth  # noqa: E402
from resbackbones.io.outputs import write_text_atomic  # noqa: E402

GROUPS = ("bccd_scratch_gn_it300", "bccd_pretrained_frozenbn_it300", "dsb2018_scratch_gn_it300",
          "dsb2018_pretrained_frozenbn_it300")
CELL = re.compile(r"^(\w+)_s(\d+)$")  # <precision>_s<seed>, as the harness names cells
COLUMNS = ("group", "metric", "draw", "comparison", "seed_a", "seed_b", "AP_a", "AP_b")


def finished_runs(group: Path):
    """{(precision kind "fp32" | "bf16", seed): run folder} of the group's cells that the harness counts as finished
    (bf16_accuracy.finished: a final eval.json, not one of a stopped run) and that saved their detections."""
    runs = {}
    for folder in sorted(group.iterdir()):
        match = CELL.match(folder.name)
        kind = precision_kind(match.group(1)) if match else None
        if kind and finished(folder) and (folder / "inference/coco_instances_results.json").exists():
            runs[(kind, int(match.group(2)))] = folder
    return runs


def subset_scores(run: Path, gt, subsets, iou_types, max_dets):
    """[{iou_type: AP}] of the run's saved detections on each image subset."""
    detections = read_coco_json(run / "inference/coco_instances_results.json", "detections")
    scores = []
    for subset in subsets:
        ids = set(subset)
        chosen = [d for d in detections if d["image_id"] in ids]
        if not chosen:  # COCOeval needs one result; with none every instance is missed: AP 0
            scores.append({t: 0.0 for t in iou_types})
            continue
        result = evaluate_coco(restrict_ground_truth(gt, subset), chosen, iou_types=iou_types, max_dets=max_dets,
                               gt_source=f"{run} subset")
        scores.append({t: result[t].stats["AP"] for t in iou_types})
    return scores


def group_rows(group: Path, images: int, draws: int, seed: int):
    if not group.is_dir():
        raise ValueError(f"{group}: no such run group (--runs / --groups)")
    runs = finished_runs(group)
    if not runs:
        raise ValueError(f"{group}: no finished run with saved detections")
    cfg = load_yaml_with_bases(next(iter(runs.values())) / "config.yaml")
    gt = read_coco_json(ROOT / cfg["data"]["val"]["ann_file"], "ground truth")
    iou_types = ("bbox", "segm") if cfg["data"]["val"].get("with_masks", True) else ("bbox",)
    max_dets = cfg.get("test", {}).get("max_dets") or (1, 10, 100)
    ids = sorted(im["id"] for im in gt["images"])
    if images > len(ids):
        raise ValueError(f"--images {images}: the val set of {group.name} has only {len(ids)} images")
    rng = random.Random(seed)
    subsets = [rng.sample(ids, images) for _ in range(draws)]
    scores = {key: subset_scores(run, gt, subsets, iou_types, max_dets) for key, run in sorted(runs.items())}
    seeds = sorted({s for _, s in runs})
    pairs = [("bf16-fp32", ("bf16", s), ("fp32", s)) for s in seeds if ("bf16", s) in runs and ("fp32", s) in runs]
    pairs += [("fp32-fp32", ("fp32", b), ("fp32", a)) for a, b in itertools.combinations(seeds, 2)
              if ("fp32", a) in runs and ("fp32", b) in runs]
    rows = []
    for metric in iou_types:
        for draw in range(draws):
            for name, a, b in pairs:
                rows.append({"group": group.name, "metric": metric, "draw": draw, "comparison": name,
                             "seed_a": a[1], "seed_b": b[1], "AP_a": f"{scores[a][draw][metric]:.4f}",
                             "AP_b": f"{scores[b][draw][metric]:.4f}"})
    return rows


def summary_table(rows, gap: float = 0.05, relative: float = 0.29) -> str:
    """Markdown: per group x metric x comparison, the spread of AP_a - AP_b over draws and pairs, and how often
    it is as large as issue 24's report (|difference| >= gap, and AP_a below AP_b by >= relative of AP_b)."""
    lines = ["| group | metric | comparison | pairs x draws | mean | SD | 5th-95th percentile "
             f"| \\|diff\\| >= {gap} | A below B by >= {relative:.0%} |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["group"], r["metric"], r["comparison"]), []).append(r)
    for (group, metric, comparison), sel in sorted(by_key.items()):
        diffs = sorted(float(r["AP_a"]) - float(r["AP_b"]) for r in sel)
        drops = [float(r["AP_a"]) <= (1 - relative) * float(r["AP_b"]) for r in sel]
        q = statistics.quantiles(diffs, n=20)
        lines.append(f"| {group} | {metric} | {comparison} | {len(diffs)} | {statistics.mean(diffs):+.4f} "
                     f"| {statistics.stdev(diffs):.4f} | {q[0]:+.4f} to {q[-1]:+.4f} "
                     f"| {sum(abs(d) >= gap for d in diffs) / len(diffs):.0%} | {sum(drops) / len(drops):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=HERE / "runs")
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--images", type=int, default=13)
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/bf16_accuracy/subset_noise.csv")
    args = p.parse_args(argv)
    if args.images < 1 or args.draws < 2:
        p.error(f"--images must be >= 1 and --draws >= 2 (the percentiles need two), got {args.images} / {args.draws}")
    rows = []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    try:
        for name in args.groups.split(","):
            rows += group_rows(args.runs / name, args.images, args.draws, args.seed)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(args.out, buffer.getvalue())
    except ValueError as error:  # a missing group, too few val images, a bad json, an unwritable --out (one line)
        p.error(str(error))
    print(summary_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
