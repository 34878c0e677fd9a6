#!/usr/bin/env python
"""Read the four CIFAR-10 runs' metrics.csv (tools/train_cls.py) and write the degradation table and curves.

    python projects/degradation/summarize.py --runs output/degradation --results projects/degradation/results

Inputs: RUNS/<model>/metrics.csv for model in plain20, plain56, resnet20, resnet56 (one row per epoch, columns
epoch, iter, train_top1, val_top1, ... in percent), and, when present, the published weights
RESULTS/checkpoints/<model>.safetensors (publish.py) whose metadata holds the final model's accuracy in eval mode.
Outputs in RESULTS/:
  summary.csv   model,iters,final_train_err,final_test_err,eval_train_err,eval_test_err,train_wall_s
                (errors in percent; final_*: last logged epoch, training error over its augmented images in train
                mode; eval_*: the published final weights in eval mode, fp32, no augmentation, on all training /
                test images - the numbers the degradation claims are checked on; empty before publishing)
  curves.csv    model,iter,train_err,test_err                 (every logged epoch: the data behind the plots)
  common_iter.csv  summary.csv's first four columns at the last iteration that every run has reached (equal
                   when all runs finished; the fair comparison when a run was stopped early and not yet resumed)
  fig6_cifar.png  paper Fig. 6 style: plain nets left, ResNets right; solid = training error, dashed = test error
Training error in the curves is the running error over each logged epoch (augmented images, train mode), as in
the paper's plots.
"""
import argparse
import csv
import sys
from pathlib import Path

MODELS = ("plain20", "plain56", "resnet20", "resnet56")
SUMMARY_COLUMNS = ("model", "iters", "final_train_err", "final_test_err", "eval_train_err", "eval_test_err",
                   "train_wall_s")
COMMON_COLUMNS = SUMMARY_COLUMNS[:4]
PAPER_TEST_ERR = {"resnet20": 8.75, "resnet56": 6.97}  # He et al. 2015, Table 6 (original CIFAR-10 test set)


class SummaryError(RuntimeError):
    """A run is missing or its metrics.csv lacks the columns this script reads."""


def read_curve(path: Path):
    """Rows (iter, train_err %, test_err % or None) of one run's metrics.csv, in logged order."""
    if not path.is_file():
        raise SummaryError(f"missing {path}: train this model first (projects/degradation/run.sh)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"iter", "train_top1", "val_top1"}
    if not rows or not needed <= set(rows[0]):
        raise SummaryError(f"{path} has no rows or lacks columns {sorted(needed - set(rows[0] if rows else ()))}")
    curve = []
    for row in rows:
        test = row["val_top1"].strip()
        # A resumed run re-logs nothing twice (the trainer restarts at the next epoch); keep the order as written.
        curve.append((int(float(row["iter"])), 100.0 - float(row["train_top1"]),
                      100.0 - float(test) if test not in ("", "nan") else None))
    return curve


def published_errors(path: Path) -> dict:
    """eval_train_err / eval_test_err / train_wall_s from a publish.py file's metadata ({} when not published)."""
    if not path.is_file():
        return {}
    from resbackbones.weights import load_with_metadata

    _, meta = load_with_metadata(path)
    try:
        return {"eval_train_err": f"{100.0 - float(meta['train_top1']):.2f}",
                "eval_test_err": f"{100.0 - float(meta['test_top1']):.2f}", "train_wall_s": meta["train_wall_s"]}
    except KeyError as missing:
        raise SummaryError(f"{path} lacks the metadata key {missing}: publish it with projects/degradation/publish.py")


def write_summary(curves, results: Path) -> list:
    """summary.csv (last logged epoch of each run + the published weights' eval numbers) and curves.csv."""
    summary = []
    for model, curve in curves.items():
        tested = [point for point in curve if point[2] is not None]
        if not tested:
            raise SummaryError(f"run {model} has no test evaluation in its metrics.csv")
        it, train_err, test_err = tested[-1]
        row = dict.fromkeys(SUMMARY_COLUMNS, "")
        row.update({"model": model, "iters": it, "final_train_err": f"{train_err:.2f}",
                    "final_test_err": f"{test_err:.2f}"})
        row.update(published_errors(results / "checkpoints" / f"{model}.safetensors"))
        summary.append(row)
    with (results / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(summary)
    with (results / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("model", "iter", "train_err", "test_err"))
        for model, curve in curves.items():
            for it, train_err, test_err in curve:
                writer.writerow((model, it, f"{train_err:.2f}", "" if test_err is None else f"{test_err:.2f}"))
    return summary


def write_common(curves, results: Path) -> list:
    """common_iter.csv: each model at the largest logged iteration (with a test error) that all models reached."""
    tested = {m: {p[0]: p for p in c if p[2] is not None} for m, c in curves.items()}
    common = set.intersection(*(set(points) for points in tested.values())) if tested else set()
    rows = []
    if common:
        it = max(common)
        rows = [{"model": m, "iters": it, "final_train_err": f"{tested[m][it][1]:.2f}",
                 "final_test_err": f"{tested[m][it][2]:.2f}"} for m in curves]
    with (results / "common_iter.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COMMON_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def check_claims(summary):
    """The paper's three CIFAR-10 claims on the published weights (eval mode) -> [(claim, holds)]; [] if unpublished."""
    err = {r["model"]: r for r in summary if r.get("eval_train_err")}
    claims = []

    def compare(kind, deeper, shallower, text):
        if deeper in err and shallower in err:
            claims.append((text, float(err[deeper][kind]) > float(err[shallower][kind])))

    compare("eval_train_err", "plain56", "plain20", "plain-56 has higher training error than plain-20 (degradation)")
    compare("eval_train_err", "resnet20", "resnet56", "ResNet-56 has lower training error than ResNet-20")
    compare("eval_test_err", "resnet20", "resnet56", "ResNet-56 has lower test error than ResNet-20")
    return claims


def plot(curves, path: Path) -> None:
    """Two panels like the paper's Fig. 6 (left: plain-20/56, right: ResNet-20/56); solid = train, dashed = test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"20": "tab:orange", "56": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, family, title in ((axes[0], "plain", "plain networks"), (axes[1], "resnet", "ResNets")):
        for depth in ("20", "56"):
            curve = curves.get(f"{family}{depth}")
            if not curve:
                continue
            its = [p[0] for p in curve]
            ax.plot(its, [p[1] for p in curve], color=colors[depth], linewidth=1.6,
                    label=f"{family}-{depth} train")
            tested = [p for p in curve if p[2] is not None]
            ax.plot([p[0] for p in tested], [p[2] for p in tested], color=colors[depth], linewidth=1.6,
                    linestyle="--", label=f"{family}-{depth} test")
        ax.set_title(f"CIFAR-10, {title}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_lines():  # a panel whose models were not run stays empty, without a legend
            ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle("solid: training error (augmented, train mode), dashed: test error (paper Fig. 6 style)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="DIR holding <model>/metrics.csv for each model")
    parser.add_argument("--results", required=True, help="DIR to write summary.csv, curves.csv, fig6_cifar.png")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    try:
        curves = {model: read_curve(Path(args.runs) / model / "metrics.csv") for model in args.models}
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    summary = write_summary(curves, results)
    common = write_common(curves, results)
    plot(curves, results / "fig6_cifar.png")
    for row in summary:
        paper = PAPER_TEST_ERR.get(row["model"])
        print(f"{row['model']:9s} {row['iters']:>6} it  train err {row['final_train_err']:>6} %  "
              f"test err {row['final_test_err']:>6} %" + (f"  (paper, full schedule: {paper} %)" if paper else ""))
    if common and any(int(r["iters"]) != common[0]["iters"] for r in summary):
        print(f"at the last common iteration {common[0]['iters']}: " + ", ".join(
            f"{r['model']} train {r['final_train_err']} % / test {r['final_test_err']} %" for r in common))
    for claim, holds in check_claims(summary):
        print(f"{'holds' if holds else 'NOT shown'}: {claim}")
    print(f"wrote {results / 'summary.csv'}, {results / 'curves.csv'}, {results / 'fig6_cifar.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
