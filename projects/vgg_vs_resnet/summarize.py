#!/usr/bin/env python
"""Collect the BCCD runs of tools/train_det.py into the VGG-16 vs ResNet table.

    python projects/vgg_vs_resnet/summarize.py --runs projects/vgg_vs_resnet/runs \
        --results projects/vgg_vs_resnet/results      # what run.sh does
    python projects/vgg_vs_resnet/summarize.py --from-csv projects/vgg_vs_resnet/results/details.csv \
        --results projects/vgg_vs_resnet/results      # redraw ap_bars.png when the run folders are gone

Inputs: RUNS/<backbone>/{config.yaml, eval.json, metrics.csv} for each backbone that has been trained.
Outputs in RESULTS/:
  summary.csv   backbone,AP,AP50,params_m,train_s_per_img,infer_s_per_img (issue 7's columns)
                AP / AP50: COCO bbox mAP@[.5:.95] / mAP@.5 on the val split in percent (COCOeval's fraction x 100,
                2 decimals; each run's eval.json keeps the fractions), the paper's unit. params_m: the whole
                detector, millions. train_s_per_img: training wall seconds / (iterations x images per batch).
                infer_s_per_img: wall seconds of the final evaluation (inference + COCOeval) / val images.
  details.csv   the same plus backbone parameters, backbone GMACs at 224x224 and at the run's input size, iters
  ap_bars.png   AP and AP50 (%) per backbone, the paper's COCO numbers (Table 8) beside ours
--from-csv FILE reads the rows from a summary.csv / details.csv this script wrote (AP in percent) instead of RUNS and
only redraws RESULTS/ap_bars.png (the CSVs are left as they are).
Times are wall clock on whatever machine ran the training: on a shared CPU they measure that machine that hour.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

ORDER = ("vgg16", "resnet50", "resnet101")
SUMMARY_COLUMNS = ("backbone", "AP", "AP50", "params_m", "train_s_per_img", "infer_s_per_img")
# Faster R-CNN on COCO val (He et al. 2016, Table 8): mAP@.5, mAP@[.5:.95] in percent, as the paper prints them.
PAPER_COCO = {"vgg16": (41.5, 21.2), "resnet101": (48.4, 27.2)}


class SummaryError(RuntimeError):
    """A run directory lacks the file this script reads."""


def read_run(run: Path) -> dict:
    """Measured numbers of one finished run: AP, AP50 (percent: eval.json's fractions x 100), iterations, train
    seconds, eval seconds."""
    eval_path = run / "eval.json"
    if not eval_path.is_file():
        raise SummaryError(f"missing {eval_path}: the run has not finished (run projects/vgg_vs_resnet/run.sh)")
    result = json.loads(eval_path.read_text())
    bbox = result.get("bbox", {})
    return {"AP": 100.0 * bbox.get("AP", 0.0), "AP50": 100.0 * bbox.get("AP50", 0.0),
            "iters": int(result["iteration"]), "train_seconds": float(result["train_seconds"]),
            "eval_seconds": float(result.get("eval_seconds", float("nan")))}


def model_costs(config_path: Path) -> dict:
    """Detector / backbone parameters and backbone MACs (224x224 and the run's own input size) from its config."""
    import torch

    import resbackbones as rb
    from resbackbones.config import from_dict, load_yaml_with_bases
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.config.legacy import upgrade
    from resbackbones.utils.flops import count_macs, count_parameters

    # A run's config.yaml, maybe written before the shared config vocabulary: read as stored output.
    stored = upgrade(load_yaml_with_bases(config_path), "det")[0]
    cfg = from_dict(DetTrainConfig, stored, source=str(config_path))
    model = rb.build_detector(cfg.model)
    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone
    short = max(cfg.model.input.min_size)
    long = min(cfg.model.input.max_size, round(short * 4 / 3))  # BCCD images are 4:3 (640x480)
    with torch.no_grad():
        macs_224 = count_macs(body, (1, 3, 224, 224))
        macs_run = count_macs(body, (1, 3, short, long))
    val = json.loads(Path(cfg.data.val.ann_file).read_text())
    return {"params_m": count_parameters(model) / 1e6, "backbone_params_m": count_parameters(body) / 1e6,
            "backbone_gmacs_224": macs_224 / 1e9, "backbone_gmacs_input": macs_run / 1e9,
            "input": f"{long}x{short}", "ims_per_batch": cfg.solver.batch_size,
            "val_images": len(val["images"]) if not cfg.test.max_images else min(cfg.test.max_images,
                                                                                 len(val["images"]))}


def summarize(runs: Path, backbones) -> list:
    rows = []
    for name in backbones:
        run = runs / name
        measured = read_run(run)
        config = run / "config.yaml"
        if not config.is_file():
            raise SummaryError(f"missing {config}")
        costs = model_costs(config)
        images = measured["iters"] * costs["ims_per_batch"]
        rows.append(dict(backbone=name, AP=measured["AP"], AP50=measured["AP50"], params_m=costs["params_m"],
                         train_s_per_img=measured["train_seconds"] / max(images, 1),
                         infer_s_per_img=measured["eval_seconds"] / max(costs["val_images"], 1),
                         backbone_params_m=costs["backbone_params_m"], backbone_gmacs_224=costs["backbone_gmacs_224"],
                         backbone_gmacs_input=costs["backbone_gmacs_input"], input=costs["input"],
                         iters=measured["iters"], train_images=images))
    return rows


def write(rows, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    fmt = {"AP": "{:.2f}", "AP50": "{:.2f}", "params_m": "{:.2f}", "train_s_per_img": "{:.3f}",
           "infer_s_per_img": "{:.3f}", "backbone_params_m": "{:.2f}", "backbone_gmacs_224": "{:.2f}",
           "backbone_gmacs_input": "{:.2f}"}
    formatted = [{k: fmt[k].format(v) if k in fmt else v for k, v in row.items()} for row in rows]
    with (results / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(formatted)
    with (results / "details.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(formatted[0]))
        writer.writeheader()
        writer.writerows(formatted)


def read_csv(path: Path) -> list:
    """Rows of a summary.csv / details.csv this script wrote (AP, AP50 in percent), numbers as floats."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise SummaryError(f"cannot read {path}: {error}") from None
    numeric = set(SUMMARY_COLUMNS[1:]) | {"backbone_params_m", "backbone_gmacs_224", "backbone_gmacs_input"}
    try:
        rows = [{k: float(v) if k in numeric else v for k, v in row.items()} for row in rows]
    except (TypeError, ValueError) as error:
        raise SummaryError(f"{path}: not a table written by this script ({error})") from None
    if not rows or any(k not in rows[0] for k in SUMMARY_COLUMNS):
        raise SummaryError(f"{path}: no rows with the columns {','.join(SUMMARY_COLUMNS)}")
    return rows


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["backbone"] for r in rows]
    for ax, key, paper_index, title in ((axes[0], "AP50", 0, "mAP@.5"), (axes[1], "AP", 1, "mAP@[.5:.95]")):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r[key] for r in rows], width=0.4, label="ours, BCCD (CPU scale)")
        paper = [PAPER_COCO.get(n, (float("nan"),) * 2)[paper_index] for n in names]
        ax.bar([x + 0.2 for x in xs], paper, width=0.4, label="paper, COCO (Table 8)", alpha=0.6)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names)
        ax.set_title(title + " (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", help="DIR holding <backbone>/eval.json and config.yaml")
    source.add_argument("--from-csv", metavar="FILE",
                        help="a summary.csv / details.csv written before: only redraw RESULTS/ap_bars.png from it")
    parser.add_argument("--results", required=True, help="DIR to write summary.csv, details.csv, ap_bars.png")
    parser.add_argument("--backbones", nargs="+", default=list(ORDER))
    args = parser.parse_args(argv)
    try:
        rows = read_csv(Path(args.from_csv)) if args.from_csv else summarize(Path(args.runs), args.backbones)
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = Path(args.results)
    if args.from_csv:
        results.mkdir(parents=True, exist_ok=True)
    else:
        write(rows, results)
    plot(rows, results / "ap_bars.png")
    base = next((r for r in rows if r["backbone"] == "vgg16"), None)
    for r in rows:
        gain = ""
        if base is not None and r is not base and base["AP"] > 0:
            relative = 100 * (r["AP"] / base["AP"] - 1)
            gain = f"  ({r['AP'] - base['AP']:+.2f} AP points, {relative:+.0f} % relative to vgg16)"
        print(f"{r['backbone']:10s} AP {r['AP']:6.2f} %  AP50 {r['AP50']:6.2f} %  params {r['params_m']:6.2f} M  "
              f"train {r['train_s_per_img']:.3f} s/img  infer {r['infer_s_per_img']:.3f} s/img{gain}")
    names = ("ap_bars.png",) if args.from_csv else ("summary.csv", "details.csv", "ap_bars.png")
    print("wrote " + ", ".join(str(results / name) for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
