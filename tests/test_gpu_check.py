"""benchmarks/gpu_check.sh: without a GPU a dry run that says "no GPU", lists its steps and exits 0; its report
(benchmarks/gpu_report.py) turns the steps' logs into one table."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import gpu_report  # noqa: E402

MIXED = """machine: CPU X, GPU Y
| benchmark | ours | reference | unit | speed-up |
|---|---|---|---|---|
| Mask R-CNN R50-FPN train step, 2 images 512x640: ours amp=bf16 vs tv fp32 eager | 0.050 | 0.120 | s | 2.40x |
| resnet50 train step, 224 px bs128: ours amp=bf16 vs tv fp32 loop | 2500.000 | 900.000 | img/s | 2.78x |
"""
BF16_SPEED = """machine: CPU X; GPU Y
| detector | fp32 s/step | auto s/step (auto =) | bf16 s/step | auto vs fp32 | bf16 vs fp32 | kept |
|---|---:|---:|---:|---:|---:|---|
| quickstart Mask R-CNN R18-GN-FPN, 128 px | 0.100 | 0.050 (bf16) | 0.049 | 2.00x | 2.04x | 98% |
"""
CIFAR = """| benchmark | alone | side by side | unit | paper schedule |
|---|---|---|---|---|
| cifar_resnet56 train, side by side vs alone | 9000 | 4000 | img/s | 34.1 min |
"""


def test_without_a_gpu_it_is_a_dry_run_that_says_no_gpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("no GPU"), proc.stdout
    for step in ("tests/test_cuda.py", "mixed_precision.py", "detectron2_vs_ours.py", "bf16_speed.py", "cifar_nets.py",
                 "gpu_report.py"):
        assert step in proc.stdout, step
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_report_is_one_table_of_every_step(tmp_path, capsys):
    (tmp_path / "machine.txt").write_text("CPU X, 16 logical CPUs; GPU NVIDIA H200 (compute capability 9.0)\n")
    (tmp_path / "tests.txt").write_text("........s\nSKIPPED [1] x\n8 passed, 1 skipped in 41.2s\n")
    (tmp_path / "mixed_precision.txt").write_text(MIXED)
    (tmp_path / "detectron2.txt").write_text("skipped: detectron2 is not importable on this machine\n")
    (tmp_path / "bf16_speed.txt").write_text(BF16_SPEED)
    (tmp_path / "cifar_nets.txt").write_text(CIFAR)
    assert gpu_report.main([str(tmp_path), "--seconds", "300"]) == 0
    table = (tmp_path / "gpu_table.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "GPU NVIDIA H200" in table and "took 5.0 min" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    assert len(rows) == 6, rows  # tests, 2 mixed-precision rows, detectron2, the bf16 study detector, 1 CIFAR net
    assert "8 passed, 1 skipped" in rows[0] and rows[0].endswith("| ok |")
    assert "2.40x" in rows[1] and "2.78x" in rows[2] and "not importable" in rows[3] and "34.1 min" in rows[5]
    assert "| 0.050 | 0.100 | s/step | 2.00x, kept 98% |" in rows[4]


def test_report_flags_failed_tests(tmp_path):
    (tmp_path / "tests.txt").write_text("FAILED tests/test_cuda.py::test_x - AssertionError\n"
                                        "1 failed, 5 passed in 3s\n")
    assert gpu_report.main([str(tmp_path)]) == 1
    assert "tests/test_cuda.py::test_x" in (tmp_path / "gpu_table.md").read_text()
