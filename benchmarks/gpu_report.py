#!/usr/bin/env python
"""The one table of benchmarks/gpu_check.sh, from the logs its steps wrote to LOG_DIR:

    tests.txt            pytest of tests/test_cuda.py        -> passed / failed / skipped
    mixed_precision.txt  benchmarks/mixed_precision.py       -> ours (amp=auto) vs torchvision fp32 rows
    detectron2.txt       benchmarks/detectron2_vs_ours.py    -> ours vs detectron2 (or why it was skipped)
    bf16_speed.txt       benchmarks/bf16_speed.py            -> amp=auto vs fp32 train step, bf16 study detector
    cifar_nets.txt       benchmarks/cifar_nets.py            -> the four CIFAR nets, alone and side by side
    machine.txt          benchmarks/machine.py               -> the machine line

    python benchmarks/gpu_report.py LOG_DIR [--seconds S]    # prints markdown; writes LOG_DIR/gpu_table.md
"""
import argparse
import datetime
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import number, table_rows  # noqa: E402


def _read(folder: Path, name: str) -> str:
    path = folder / name
    return path.read_text(errors="replace") if path.is_file() else ""


def test_rows(text: str):
    if not text:
        return [("tests", "tests/test_cuda.py", "", "", "", "not run")]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", text)}
    failed = [line.split()[1] for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    verdict = "ok" if counts.get("passed") and not (counts.get("failed") or counts.get("error") or
                                                   counts.get("errors")) else "FAILED"
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary (timed out?)"
    rows = [("tests", "tests/test_cuda.py (CUDA device / AMP / RoIAlign / steps / tools)", summary, "", "", verdict)]
    rows += [("tests", f"failed: {name}", "", "", "", "FAILED") for name in failed]
    return rows


def mixed_rows(text: str):
    rows = []
    for cells in table_rows(text):
        name, ours, ref, unit, ratio = cells[:5]
        rows.append(("ours vs torchvision", name, f"{number(ours):.4g}", f"{number(ref):.4g}", unit, ratio))
    return rows or [("ours vs torchvision", "benchmarks/mixed_precision.py", "", "", "", "no rows (see log)")]


def detectron2_rows(text: str):
    if not text or "skipped" in text.splitlines()[0]:
        return [("ours vs detectron2", "Mask R-CNN R50-FPN", "", "", "", (text.strip() or "not run")[:80])]
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("[median]") and "ours" in line:
            for phase, seconds, ratio in (("train step", parts[-4], parts[-2]), ("inference", parts[-3], parts[-1])):
                ours, ratio = float(seconds), float(ratio)  # ratio: our time / detectron2's
                rows.append(("ours vs detectron2", f"Mask R-CNN R50-FPN {phase}, 2 COCO images", f"{ours:.4g}",
                             f"{ours / ratio:.4g}", "s", f"{1 / ratio:.2f}x"))
    return rows or [("ours vs detectron2", "benchmarks/detectron2_vs_ours.py", "", "", "", "no rows (see log)")]


def bf16_speed_rows(text: str):
    rows = []
    for cells in table_rows(text):
        name, fp32, auto, _bf16, auto_up, _bf16_up, kept = cells[:7]
        rows.append(("amp=auto vs fp32 (issue 24)", f"{name} train step", auto.split()[0], fp32, "s/step",
                     f"{auto_up}, kept {kept}" if kept.endswith("%") else f"{auto_up}, {kept}"))
    return rows or [("amp=auto vs fp32 (issue 24)", "benchmarks/bf16_speed.py", "", "", "", "not run or no rows")]


def cifar_rows(text: str):
    rows = []
    for cells in table_rows(text):
        name, alone, together, unit, paper = cells[:5]
        rows.append(("CIFAR nets", name, together, alone, unit, f"paper schedule ~{paper}"))
    return rows or [("CIFAR nets", "benchmarks/cifar_nets.py", "", "", "", "not run (time) or no rows")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--seconds", type=float, help="the check's total time, for the header")
    args = parser.parse_args(argv)
    logs = args.log_dir
    machine = _read(logs, "machine.txt").strip() or "unknown (machine.txt missing)"
    rows = (test_rows(_read(logs, "tests.txt")) + mixed_rows(_read(logs, "mixed_precision.txt"))
            + detectron2_rows(_read(logs, "detectron2.txt")) + bf16_speed_rows(_read(logs, "bf16_speed.txt"))
            + cifar_rows(_read(logs, "cifar_nets.txt")))
    lines = [
        "# GPU check (benchmarks/gpu_check.sh)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
        + (f"; took {args.seconds / 60:.1f} min" if args.seconds else ""),
        f"- machine: {machine}",
        "- speed-up = reference time / our time (> 1: ours is faster); CIFAR rows: ours = side by side, "
        "reference = alone",
        "",
        "| part | measure | ours | reference | unit | speed-up / result |",
        "|---|---|---:|---:|---|---|",
    ]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    report = "\n".join(lines) + "\n"
    (logs / "gpu_table.md").write_text(report)
    print(report)
    return 0 if all(row[5] != "FAILED" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
