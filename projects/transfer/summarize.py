#!/usr/bin/env python
"""Collect the transfer study's fine-tuning runs into results/summary.csv, details.csv, ap_bars.png and the README
tables.

    python projects/transfer/summarize.py --runs projects/transfer/runs --results projects/transfer/results

Inputs (what run.sh writes): RUNS/<dataset>/<backbone>_<init>/{eval.json, config.yaml} of tools/train_det.py for
every finished fine-tune (eval.json present; unfinished ones are listed as pending), and for init "pretrained" the
backbone weights its config.yaml names (the tools/train_cls.py --export: epochs and CIFAR-10 top-1 in its metadata).
Outputs in RESULTS/:
  summary.csv  dataset,backbone,init,pretrain_epochs,finetune_iters,bbox_AP,bbox_AP50,segm_AP,segm_AP50 (issue 13)
               COCO AP@[.5:.95] / AP@.5 on the val split in percent (COCOeval's fraction x 100, 2 decimals; each
               run's eval.json keeps the fractions; at the run's test.max_dets), the paper's unit; segm empty for
               box-only sets; pretrain_epochs 0 for scratch.
  details.csv  the same (AP in percent) + pretraining CIFAR-10 top-1 (percent) and input size, train / eval
               seconds, max_dets, amp
  ap_bars.png  AP (%) per backbone, pretrained beside scratch, one panel per dataset and metric
--readme FILE (repeatable) rewrites the blocks between "<!-- transfer:NAME -->" and "<!-- /transfer:NAME -->" that
FILE holds (NAME: table, claims, vgg_vs_resnet); --readme-if-default does it for projects/transfer/README.md and
projects/vgg_vs_resnet/README.md when --results is projects/transfer/results.
"""
import argparse
import csv
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_READMES = (HERE / "README.md", HERE.parent / "vgg_vs_resnet" / "README.md")
DATASETS = ("bccd", "dsb")
DATASET_NAMES = {"bccd": "BCCD (Faster R-CNN)", "dsb": "DSB2018 nuclei (Mask R-CNN)"}
BACKBONE_ORDER = ("vgg16", "resnet50", "resnet101")
BACKBONE_NAMES = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "resnet101": "ResNet-101"}
INITS = ("scratch", "pretrained")
COLUMNS = ("dataset", "backbone", "init", "pretrain_epochs", "finetune_iters", "bbox_AP", "bbox_AP50", "segm_AP",
           "segm_AP50")
DETAIL_COLUMNS = COLUMNS + ("pretrain_top1", "pretrain_px", "train_seconds", "eval_seconds", "max_dets", "amp")
# He et al. 2016, Faster R-CNN baselines: Table 7 PASCAL VOC mAP (07 test / 12 test), Table 8 COCO val mAP@.5,
# @[.5:.95]; in percent, as the paper prints them and like every AP here
PAPER = {"vgg16": {"voc07": 73.2, "voc12": 70.4, "coco50": 41.5, "coco": 21.2},
         "resnet101": {"voc07": 76.4, "voc12": 73.8, "coco50": 48.4, "coco": 27.2}}
AP_KEYS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")  # percent (eval.json's fractions x 100), 2 decimals
PERCENT_NOTE = "AP in percent (COCOeval's fraction x 100; each run's eval.json keeps the fractions)."


class SummaryError(RuntimeError):
    """A run lacks what this script reads; the message names the file."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SummaryError(f"cannot read {path}: {error}") from None


def _weights_of(config_path: Path) -> str:
    import yaml

    if not config_path.is_file():
        raise SummaryError(f"missing {config_path} (written by tools/train_det.py at the start of the run)")
    config = yaml.safe_load(config_path.read_text()) or {}
    return str(((config.get("model") or {}).get("backbone") or {}).get("weights") or "")


def pretraining_of(weights: str, run: Path) -> dict:
    """epochs, CIFAR-10 top-1 and input size of the export a pretrained run started from (its metadata)."""
    from safetensors import safe_open

    path = Path(weights)
    if not weights or not path.is_file():
        raise SummaryError(f"{run}: init 'pretrained' but its backbone weights {weights or '(none)'} are missing; "
                           f"pretrained runs start from run.sh's export")
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    if "epochs" not in meta:
        raise SummaryError(f"{path} has no 'epochs' in its metadata: not a tools/train_cls.py --export")
    crop = re.search(r"crop (\d+) px", meta.get("rb.notes", ""))
    return {"pretrain_epochs": int(meta["epochs"]), "pretrain_top1": meta.get("val_top1", ""),
            "pretrain_px": crop.group(1) if crop else ""}


def read_run(run: Path, dataset: str) -> dict:
    backbone, _, init = run.name.rpartition("_")
    if init not in INITS or not backbone:
        raise SummaryError(f"{run}: folder name must be <backbone>_<init> with init in {', '.join(INITS)}")
    result = _read_json(run / "eval.json")
    row = {"dataset": dataset, "backbone": backbone, "init": init, "finetune_iters": int(result["iteration"]),
           "pretrain_epochs": 0, "pretrain_top1": "", "pretrain_px": "",
           "train_seconds": result.get("train_seconds", ""), "eval_seconds": result.get("eval_seconds", ""),
           "max_dets": " ".join(map(str, result.get("max_dets", [1, 10, 100]))), "amp": result.get("amp", "")}
    for iou in ("bbox", "segm"):
        stats = result.get(iou)
        row[f"{iou}_AP"] = 100.0 * stats["AP"] if stats else None  # percent: eval.json's fraction x 100
        row[f"{iou}_AP50"] = 100.0 * stats.get("AP50", 0.0) if stats else None  # no AP50: nothing was detected
    if init == "pretrained":
        row.update(pretraining_of(_weights_of(run / "config.yaml"), run))
    return row


def _order(row: dict):
    backbone = row["backbone"]
    rank = BACKBONE_ORDER.index(backbone) if backbone in BACKBONE_ORDER else len(BACKBONE_ORDER)
    return DATASETS.index(row["dataset"]), rank, backbone, INITS.index(row["init"])


def collect(runs: Path):
    """(rows of finished runs in table order, names of unfinished runs)."""
    if not runs.is_dir():
        raise SummaryError(f"runs folder {runs} not found (run projects/transfer/run.sh first)")
    rows, pending = [], []
    for dataset in DATASETS:
        for run in sorted(p for p in (runs / dataset).glob("*_*") if p.is_dir()):
            if (run / "eval.json").is_file():
                rows.append(read_run(run, dataset))
            else:
                pending.append(f"{dataset}/{run.name}")
    if not rows:
        raise SummaryError(f"no finished fine-tuning run (<dataset>/<backbone>_<init>/eval.json) under {runs}")
    return sorted(rows, key=_order), pending


def _fmt(value, digits: int = 2) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ap(value) -> str:
    """An AP in percent for the CSVs and tables: 2 decimals (3.78 = eval.json's 0.0378)."""
    return _fmt(value, 2)


def write_csv(rows, path: Path, columns) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _ap(r.get(k)) if k in AP_KEYS else _fmt(r.get(k)) for k in columns} for r in rows)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, iou) for d in DATASETS for iou in ("bbox", "segm")
              if any(r["dataset"] == d and r[f"{iou}_AP"] is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, iou) in zip(axes[0], panels):
        mine = [r for r in rows if r["dataset"] == dataset]
        backbones = sorted({r["backbone"] for r in mine}, key=lambda b: _order(dict(mine[0], backbone=b)))
        for offset, init, color in ((-0.2, "scratch", "#999999"), (0.2, "pretrained", "#1f77b4")):
            values = {r["backbone"]: r[f"{iou}_AP"] for r in mine if r["init"] == init}
            heights = [values.get(b) or 0.0 for b in backbones]
            bars = ax.bar([x + offset for x in range(len(backbones))], heights, width=0.4, color=color, label=init)
            for bar, b in zip(bars, backbones):
                if b in values:
                    ax.annotate(f"{values[b]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(range(len(backbones))))
        ax.set_xticklabels([BACKBONE_NAMES.get(b, b) for b in backbones])
        ax.set_title(f"{DATASET_NAMES[dataset]}: {iou} AP (%)", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- README blocks ---------------------------------------------------------------------------------------------------
def _find(rows, dataset, backbone, init):
    return next((r for r in rows if (r["dataset"], r["backbone"], r["init"]) == (dataset, backbone, init)), None)


def table_block(rows) -> str:
    lines = ["| dataset | backbone | init | pretraining: epochs, px, CIFAR-10 top-1 | fine-tune iters | "
             "bbox AP (%) | bbox AP50 (%) | segm AP (%) | segm AP50 (%) | AP gain over scratch (points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pre = f"{r['pretrain_epochs']}, {r['pretrain_px']} px, {r['pretrain_top1']} %" if r["init"] == "pretrained" else "-"
        key = "segm_AP" if r["segm_AP"] is not None else "bbox_AP"
        base = _find(rows, r["dataset"], r["backbone"], "scratch")
        gain = f"{r[key] - base[key]:+.2f} ({key[:4]})" if r["init"] == "pretrained" and base else ""
        lines.append(f"| {r['dataset']} | {BACKBONE_NAMES.get(r['backbone'], r['backbone'])} | {r['init']} | {pre} | "
                     f"{r['finetune_iters']} | {_ap(r['bbox_AP'])} | {_ap(r['bbox_AP50'])} | {_ap(r['segm_AP'])} | "
                     f"{_ap(r['segm_AP50'])} | {gain} |")
    lines.append(f"\n{PERCENT_NOTE}")
    return "\n".join(lines)


def claims(rows):
    """(claim, holds: True / False / None when a run is missing, the numbers) for the issue's three claims."""
    checks = [("ResNet-50 on BCCD: pretrained bbox AP > scratch", "bccd", "resnet50", "pretrained", "bccd",
               "resnet50", "scratch", "bbox_AP"),
              ("ResNet-50 on DSB2018 nuclei: pretrained segm AP > scratch", "dsb", "resnet50", "pretrained", "dsb",
               "resnet50", "scratch", "segm_AP"),
              ("the paper's order on BCCD, both pretrained: ResNet-101 bbox AP > VGG-16", "bccd", "resnet101",
               "pretrained", "bccd", "vgg16", "pretrained", "bbox_AP")]
    out = []
    for text, d1, b1, i1, d2, b2, i2, key in checks:
        a, b = _find(rows, d1, b1, i1), _find(rows, d2, b2, i2)
        if a is None or b is None or a[key] is None or b[key] is None:
            out.append((text, None, "not run yet"))
        else:
            out.append((text, a[key] > b[key], f"AP {a[key]:.2f} % vs {b[key]:.2f} %"))
    return out


def claims_block(rows) -> str:
    marks = {True: "holds", False: "does NOT hold", None: "pending"}
    return "\n".join(f"- {text}: **{marks[ok]}** ({numbers})" for text, ok, numbers in claims(rows))


def vgg_vs_resnet_block(rows) -> str:
    lines = ["| backbone (pretrained on CIFAR-10, same protocol) | BCCD bbox AP (%) | BCCD AP50 (%) | AP vs VGG-16 "
             "(points) | paper VOC07 mAP (%, T7) | paper VOC12 mAP (%, T7) | paper COCO mAP@.5 (%, T8) | "
             "paper COCO mAP@[.5:.95] (%, T8) |",
             "|---|---|---|---|---|---|---|---|"]
    vgg = _find(rows, "bccd", "vgg16", "pretrained")
    for backbone in BACKBONE_ORDER:
        r = _find(rows, "bccd", backbone, "pretrained")
        paper = PAPER.get(backbone, {})
        ours = (_ap(r["bbox_AP"]), _ap(r["bbox_AP50"])) if r else ("not run yet", "")
        gain = ""
        if r and vgg and r is not vgg and vgg["bbox_AP"] > 0:
            gain = f"{r['bbox_AP'] - vgg['bbox_AP']:+.2f} ({100 * (r['bbox_AP'] / vgg['bbox_AP'] - 1):+.0f} %)"
        cells = [f"{paper[k]:.1f}" if k in paper else "-" for k in ("voc07", "voc12", "coco50", "coco")]
        lines.append(f"| {BACKBONE_NAMES[backbone]} | {ours[0]} | {ours[1]} | {gain} | " + " | ".join(cells) + " |")
    lines.append("| paper gain ResNet-101 vs VGG-16 | | | | +3.2 | +3.4 | +6.9 (+17 %) | +6.0 (+28 %) |")
    lines.append(f"\n{PERCENT_NOTE[:-1]}, the paper's as printed; gains in points, in parentheses relative.")
    return "\n".join(lines)


def fill_readme(path: Path, blocks) -> bool:
    """Replace each <!-- transfer:NAME --> ... <!-- /transfer:NAME --> block of `path`; False if it has none."""
    text = original = path.read_text()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- transfer:{name} -->)\n(?:.*?\n)?(<!-- /transfer:{name} -->)", re.S)
        text = pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)
    if text != original:
        path.write_text(text)
    return text != original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="run.sh's TR_RUNS (DATASET/BACKBONE_INIT/eval.json)")
    parser.add_argument("--results", required=True, help="DIR for summary.csv, details.csv, ap_bars.png")
    parser.add_argument("--readme", action="append", default=[], help="README whose transfer blocks to rewrite")
    parser.add_argument("--readme-if-default", action="store_true",
                        help="rewrite the project READMEs when --results is projects/transfer/results")
    args = parser.parse_args(argv)
    try:
        rows, pending = collect(Path(args.runs))
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(rows, results / "summary.csv", COLUMNS)
    write_csv(rows, results / "details.csv", DETAIL_COLUMNS)
    plot(rows, results / "ap_bars.png")
    readmes = [Path(p) for p in args.readme]
    if args.readme_if_default and results.resolve() == (HERE / "results").resolve():
        readmes += list(DEFAULT_READMES)
    blocks = {"table": table_block(rows), "claims": claims_block(rows), "vgg_vs_resnet": vgg_vs_resnet_block(rows)}
    for readme in readmes:
        if not readme.is_file():
            print(f"error: README {readme} not found", file=sys.stderr)
            return 2
        if fill_readme(readme, blocks):
            print(f"updated the tables in {readme}")
    print(table_block(rows))
    print(claims_block(rows))
    if pending:
        print(f"pending (no eval.json yet): {', '.join(pending)}")
    print(f"wrote {results / 'summary.csv'}, {results / 'details.csv'}, {results / 'ap_bars.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
