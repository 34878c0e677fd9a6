#!/usr/bin/env python
"""Every benchmark in one command, one table: each figure is ours vs the reference measured in the same run on the
same inputs (median of repeats after warm-up, computed by the individual scripts, which this one calls unchanged):

  backbone.py       ResNet-18/50/101 forward, forward+backward, fast inference path vs torchvision
  detection.py      Faster / Mask R-CNN R50-FPN train step and inference vs torchvision
  detectron2_vs_ours.py  Mask R-CNN vs detectron2 (only when detectron2 is importable)
  coco_eval.py      COCO bbox + segm evaluation vs pycocotools and faster-coco-eval, 12 stats identical
  train_cls.py      classification training and data pipelines vs torchvision (transforms v2, PIL)
  efficiency.py     ResNet-50 GFLOP/s vs the measured fp32 / bf16 GEMM peaks; time vs batch / image size (PNG)
  mixed_precision.py  amp=auto (bf16 where native) vs torchvision fp32: Mask R-CNN step, cls training, fast inference
  deploy_real.py    exported detectors (.pt, .pt2, ONNX fp32 / int8) on BCCD / DSB2018 val: ms, AP, parity, 1 thread
                    (only with ../shared/data and the bf16 study's checkpoints; else one "skipped" row)

    python benchmarks/run_all.py                 # full run (tens of minutes on 2 CPU cores)
    python benchmarks/run_all.py --quick         # small sizes, a few minutes: checks that everything runs

Writes OUT/benchmarks.md (machine: CPU model, amx_bf16 / avx512_bf16 flags, GPU; then the table), OUT/efficiency.png,
OUT/logs/*.txt (each script's full output).
"speed-up" is always reference time / our time (> 1: ours is faster), whatever the unit of the row.
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def machine() -> str:
    """The benchmark machine: CPU model, bf16 flags (amx_bf16, avx512_bf16), threads, GPU (machine.py)."""
    import torch

    sys.path.insert(0, str(HERE))
    from machine import describe

    return describe(torch.device("cuda") if torch.cuda.is_available() else None)


def table_rows(text: str):
    """Cells of the markdown table rows in a script's output (header and separator lines skipped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")) or set(line) <= set("|-: "):  # ":" aligns columns
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in ("comparison", "benchmark", "measure", "detector"):
            continue
        rows.append(cells)
    return rows


def number(text: str) -> float:
    return float(re.sub(r"[^0-9.eE+-]", "", text))


class Runner:
    def __init__(self, out: Path, timeout: int, collect: bool = False, missing_ok: bool = False):
        self.out, self.timeout, self.collect, self.missing_ok = out, timeout, collect, missing_ok
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.rows, self.failures = [], []

    def run(self, name: str, args, env=None) -> str:
        """Run one script; its output goes to logs/NAME.txt; a failure is recorded, not fatal."""
        log = self.out / "logs" / f"{name}.txt"
        if self.collect:  # table from the logs of an earlier (or interrupted) run
            if not log.is_file():
                if not self.missing_ok:
                    self.failures.append(f"{name} (no log)")
                return ""
            return log.read_text()
        start = time.time()
        print(f"[run_all] {name}: {' '.join(str(a) for a in args)}", flush=True)
        try:
            proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                                  timeout=self.timeout, env=dict(os.environ, **(env or {})))
            text, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as error:
            text, code = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or ""), -1
            text += f"\n[run_all] timed out after {self.timeout} s"
        (self.out / "logs" / f"{name}.txt").write_text(text)
        print(f"[run_all] {name}: exit {code} in {time.time() - start:.0f} s", flush=True)
        if code != 0:
            self.failures.append(f"{name} (exit {code}; see logs/{name}.txt)")
        return text

    def add(self, area, benchmark, ours, reference, unit, speedup, note=""):
        self.rows.append((area, benchmark, ours, reference, unit, speedup, note))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in a few minutes")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 5, quick 2)")
    parser.add_argument("--coco-images", type=int, help="images in the COCO eval benchmark (default 5000, quick 200)")
    parser.add_argument("--only", nargs="+", help="run only these parts: backbone detection detectron2 coco_eval "
                                                  "train_cls efficiency mixed_precision deploy")
    parser.add_argument("--backbone-batch", type=int, help="batch of the backbone rows (default 8, quick 2)")
    parser.add_argument("--backbone-size", type=int, help="image side of the backbone rows (default 224, quick 160)")
    parser.add_argument("--det-size", nargs=2, help="H W of the detection rows (default 512 640, quick 192 256)")
    parser.add_argument("--collect", action="store_true", help="run nothing: build the table from OUT/logs")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per script")
    parser.add_argument("--jobs", type=int, default=1, help="parts run at the same time (1: one after the other, "
                                                             "the clean way to time; >1 only on a busy shared box)")
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    coco_images = args.coco_images or (200 if quick else 5000)
    every_part = ["backbone", "detection", "detectron2", "coco_eval", "train_cls", "efficiency", "mixed_precision",
                  "deploy"]
    parts = set(args.only or every_part)
    out = args.out
    runner = Runner(out, args.timeout, collect=args.collect)
    # With --only, the other parts' rows come from their logs of an earlier run, so the table stays whole.
    from_logs = Runner(out, args.timeout, collect=True, missing_ok=True)
    local = threading.local()

    def add(*row):
        local.rows.append(row)

    started = time.time()
    load_before = os.getloadavg()

    def part_backbone():
        for arch in ("resnet18", "resnet50", "resnet101"):
            batch = args.backbone_batch or (2 if quick else 8)
            size = args.backbone_size or (160 if quick else 224)
            text = local.runner.run(f"backbone_{arch}", [HERE / "backbone.py", "--arch", arch, "--batch", batch,
                                                   "--repeats", repeats, "--size", size])
            measured = re.search(r"batch (\d+), (\d+)px", text)  # what the log says was run (--collect)
            if measured:
                batch, size = measured.groups()
            for cells in table_rows(text):
                label, ours, ref, ratio = cells[:4]
                add("backbone", f"{arch} bs{batch} {size}px: {label}", number(ours), number(ref), "img/s",
                    number(ratio), "ref: torchvision")

    def part_detection():
        size = args.det_size or (["192", "256"] if quick else ["512", "640"])
        text = local.runner.run("detection", [HERE / "detection.py", "--repeats", repeats, "--size", *size, "--skip-eval"])
        for cells in table_rows(text):
            name, ref, ours, ratio = cells[:4]
            add("detection", f"{name}, 2 images {size[0]}x{size[1]}", number(ours), number(ref), "s",
                number(ratio), "ref: torchvision, same weights")

    def part_detectron2():
        if importlib.util.find_spec("detectron2") is None:
            add("detection", "Mask R-CNN R50-FPN vs detectron2", None, None, "s", None,
                "skipped: detectron2 is not installed (scripts/install_detectron2.sh)")
        else:
            text = local.runner.run("detectron2", [HERE / "detectron2_vs_ours.py", "--repeats", repeats, "--images", 2,
                                             "--short-side", 320 if quick else 512])
            rows = [line.split() for line in text.splitlines() if line.startswith("[median]")]
            times = {" ".join(r[1:-5]): (float(r[-4]), float(r[-3])) for r in rows[1:]}  # model: (train s, infer s)
            reference = times.get("detectron2")
            for model, (train_s, infer_s) in times.items():
                if model == "detectron2" or reference is None:
                    continue
                for phase, ours_s, ref_s in (("train step", train_s, reference[0]), ("inference", infer_s, reference[1])):
                    add("detection", f"Mask R-CNN R50-FPN {phase}, 2 COCO images 512 px: {model} vs detectron2",
                        ours_s, ref_s, "s", ref_s / ours_s, "ref: detectron2's own model")

    def part_coco_eval():
        json_path = out / "logs" / "coco_eval.json"
        local.runner.run("coco_eval", [HERE / "coco_eval.py", "--images", coco_images, "--json", json_path])
        if json_path.is_file():
            for r in json.loads(json_path.read_text()):
                add("COCO eval", r["benchmark"], r["ours"], r["reference"], "s", r["speedup"],
                    "12 stats identical" if r["identical_12_stats"] else "STATS DIFFER: " +
                    ",".join(r["differing"]))

    def part_train_cls():
        text = local.runner.run("train_cls", [HERE / "train_cls.py", "--images", 128 if quick else 512,
                                        "--repeats", min(repeats, 3), "--out", out / "logs" / "train_cls_run"])
        for cells in table_rows(text):
            name, ours, ref, ratio = cells[:4]
            area = "data pipeline" if name.startswith("data:") else "cls training"
            add(area, name, number(ours), number(ref), "img/s", number(ratio),
                "ref: PIL + torchvision transforms v2" + ("" if area == "data pipeline" else " + tv loop"))

    def part_efficiency():
        json_path = out / "logs" / "efficiency.json"
        eff_args = ["--repeats", max(2, repeats - 2), "--png", out / "efficiency.png", "--json", json_path]
        if quick:
            eff_args += ["--batch", 2, "--batches", 1, 2, 4, "--sizes", 128, 224, 320]
        local.runner.run("efficiency", [HERE / "efficiency.py", *eff_args])
        if json_path.is_file():
            eff = json.loads(json_path.read_text())
            for r in eff["rows"]:
                note = f"{100 * r['fraction_of_peak']:.1f} % of the fp32 GEMM peak"
                if "fraction_of_bf16_peak" in r:
                    note += f", {100 * r['fraction_of_bf16_peak']:.1f} % of the bf16 GEMM peak"
                add("efficiency", r["benchmark"], r["gflops"], None, "GFLOP/s", None, note)

    def part_mixed_precision():
        size = args.det_size or (["192", "256"] if quick else ["512", "640"])
        mp_args = ["--repeats", repeats, "--det-size", *size, "--cls-epochs"] + (["--quick"] if quick else [])
        text = local.runner.run("mixed_precision", [HERE / "mixed_precision.py", *mp_args])
        for cells in table_rows(text):
            name, ours, ref, unit, ratio = cells[:5]
            add("mixed precision", name, number(ours), number(ref), unit, number(ratio),
                "ref: torchvision fp32 (eager model / plain loop), same weights")

    def part_deploy():
        sys.path.insert(0, str(HERE))
        from deploy_real import DATASETS

        needed = [s["folder"] / "val.json" for s in DATASETS.values()] + \
            [s["run"] / "checkpoints" / "last.pt" for s in DATASETS.values()]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing and not local.runner.collect:
            add("deployment", "exported detectors on BCCD / DSB2018 val", None, None, "ms", None,
                f"skipped: {missing[0]} missing (../shared/data and benchmarks/bf16_accuracy runs)")
            return
        local.runner.run("deploy", [HERE / "deploy_real.py", "--out", out], env={"OMP_NUM_THREADS": "1",
                                                                                 "MKL_NUM_THREADS": "1"})
        table = out / "deploy.csv"
        if table.is_file():
            import csv

            rows = list(csv.DictReader(table.open()))
            ref = {r["dataset"]: float(r["ms_per_image"]) for r in rows if r["row"] == "torchvision eager fp32"}
            for r in rows:
                ap = ", ".join(f"AP {k[3:]} {100 * float(r[k]):.2f}" for k in ("ap_bbox", "ap_segm") if r[k])
                parity = f"labels equal {r['labels_equal']}, box {float(r['max_box_diff_rel']):.1e} of size, " \
                    f"score {float(r['max_score_diff']):.1e}" if r["labels_equal"] else ""
                add("deployment", f"{r['dataset']}: {r['row']}, 1 image, 1 thread", float(r["ms_per_image"]),
                    ref.get(r["dataset"]),
                    "ms", float(r["vs_torchvision"]) if r["vs_torchvision"] else None,
                    "; ".join(x for x in (ap, parity, "ref: torchvision eager fp32, same weights") if x))

    collected = {n: [] for n in every_part}
    functions = {"backbone": part_backbone, "detection": part_detection, "detectron2": part_detectron2,
                 "coco_eval": part_coco_eval, "train_cls": part_train_cls, "efficiency": part_efficiency,
                 "mixed_precision": part_mixed_precision, "deploy": part_deploy}

    def run_part(name):
        local.rows = collected[name]
        local.runner = runner if name in parts else from_logs
        functions[name]()

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(run_part, [n for n in every_part if n in parts]))
    for name in every_part:
        if name not in parts:
            run_part(name)
        runner.rows += collected[name]

    minutes = (time.time() - started) / 60
    load_after = os.getloadavg()
    lines = [
        f"# Benchmarks ({'quick' if quick else 'full'} run)",
        "",
        f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; took {minutes:.1f} min",
        f"- machine: {machine()}",
        f"- load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        f"(shared machine: absolute numbers are noisy, the ratios compare runs interleaved in the same process)",
        f"- parts run {args.jobs} at a time; each part interleaves ours and the reference in one process",
        f"- command: python benchmarks/run_all.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        *([f"- measured by this command: {', '.join(n for n in every_part if n in parts)}; the other rows come "
           f"from their logs of an earlier run (logs/)"] if args.only and not args.collect else []),
        "- speed-up = reference time / our time (> 1: ours is faster); img/s rows: ours / reference",
        "",
        "| area | benchmark | ours | reference | unit | speed-up | note |",
        "|---|---|---:|---:|---|---:|---|",
    ]

    def fmt(value, digits=3):
        return "–" if value is None else f"{value:.{digits}g}"

    for area, bench, ours, ref, unit, speedup, note in runner.rows:
        lines.append(f"| {area} | {bench} | {fmt(ours)} | {fmt(ref)} | {unit} | "
                     f"{'–' if speedup is None else f'{speedup:.2f}x'} | {note} |")
    if collected["efficiency"]:
        lines += ["", "![ResNet-50 time vs batch and image size](efficiency.png)"]
    if runner.failures:
        lines += ["", "Failed parts: " + "; ".join(runner.failures)]
    report = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / ("benchmarks_quick.md" if quick else "benchmarks.md")).write_text(report)
    print("\n" + report)
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
