"""projects/degradation: run.sh trains with tools/train_cls.py, resumes, publishes each final model as a
self-describing .safetensors and writes the summary table + curves.

A tiny schedule (2 epochs of 2 iterations, two of the four nets) on a 120-image CIFAR-10 folder cut from the real
test.tar; the summarizer itself is also checked on all four models with known metrics.
"""
import csv
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, load_project_module, require_shared

PROJECT = REPO / "projects" / "degradation"
summarize = load_project_module("degradation", "summarize")


def _tiny_cifar(tmp_path: Path) -> Path:
    """train/ (8 per class) and test/ (4 per class) image folders cut from the shared CIFAR-10 test.tar."""
    source = require_shared("data/cifar10/test.tar")
    root = tmp_path / "cifar10"
    taken = {}
    with tarfile.open(source) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            label = member.name.split("/")[-2]
            index = taken.get(label, 0)
            if index >= 12:
                continue
            taken[label] = index + 1
            split = "train" if index < 8 else "test"
            target = root / split / label / Path(member.name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    assert len(taken) == 10
    return root


def _run(env_extra):
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", str(PROJECT / "run.sh")], env=env, capture_output=True, text=True, timeout=300)


def test_run_sh_tiny_schedule_trains_resumes_and_summarizes(tmp_path):
    env = {"CIFAR10": str(_tiny_cifar(tmp_path)), "DEG_RUNS": str(tmp_path / "runs"),
           "DEG_RESULTS": str(tmp_path / "results"), "DEG_MODELS": "plain20 resnet20", "DEG_EPOCHS": "2",
           "DEG_BATCH": "16", "DEG_TRAIN_SUBSET": "32", "DEG_VAL_SUBSET": "20", "DEG_THREADS": "1"}
    first = _run(env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    with (tmp_path / "results" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "iters", "final_train_err", "final_test_err", "eval_train_err",
                             "eval_test_err", "train_wall_s"]
    assert [r["model"] for r in rows] == ["plain20", "resnet20"]
    for row in rows:
        assert int(row["iters"]) == 4  # 2 epochs x (32 images / batch 16)
        for key in ("final_train_err", "final_test_err", "eval_train_err", "eval_test_err"):
            assert 0.0 <= float(row[key]) <= 100.0, (key, row)
    assert (tmp_path / "results" / "fig6_cifar.png").stat().st_size > 10_000
    _check_published(tmp_path / "results" / "checkpoints" / "resnet20.safetensors", "cifar_resnet20",
                     rows[1]["eval_test_err"])

    # Finished models are skipped; an unfinished one (no DONE marker, a checkpoint) resumes with --resume.
    (tmp_path / "runs" / "resnet20" / "DONE").unlink()
    second = _run(env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "plain20: already finished" in second.stdout
    assert "resnet20: resuming" in second.stdout
    with (tmp_path / "results" / "summary.csv").open() as handle:
        assert [r["iters"] for r in csv.DictReader(handle)] == ["4", "4"]


def _check_published(path: Path, arch: str, test_err: str) -> None:
    """The published file rebuilds its model from its own metadata and carries its eval-mode numbers."""
    import resbackbones as rb

    state, raw = rb.weights.load_with_metadata(path)
    meta = rb.weights.WeightsMetadata.from_dict(raw)
    assert (meta.arch, meta.num_classes, meta.input_format, meta.pixel_scale) == (arch, 10, "RGB", 1.0)
    assert meta.pixel_mean == pytest.approx((0.4914, 0.4822, 0.4465)) and len(meta.pixel_std) == 3
    model = rb.build_classifier(meta.arch, num_classes=meta.num_classes)
    model.load_state_dict(state)  # strict: every tensor present, nothing extra
    assert float(raw["test_top1"]) == pytest.approx(100.0 - float(test_err), abs=0.005)
    assert raw["test_count"] == "40" and raw["train_count"] == "80" and raw["test500_count"] == "2"
    assert raw["epochs"] == "2" and raw["iterations"] == "4" and int(raw["train_wall_s"]) >= 0


def test_run_sh_names_a_missing_dataset(tmp_path):
    result = _run({"CIFAR10": str(tmp_path / "nowhere"), "DEG_RUNS": str(tmp_path / "runs")})
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "CIFAR10=" in result.stderr


def test_summarize_all_four_models(tmp_path):
    runs = tmp_path / "runs"
    finals = {"plain20": (30.0, 35.0), "plain56": (40.0, 44.0), "resnet20": (28.0, 33.0), "resnet56": (25.0, 31.0)}
    for model, (train_err, test_err) in finals.items():
        (runs / model).mkdir(parents=True)
        (runs / model / "metrics.csv").write_text(
            "epoch,iter,train_loss,train_top1,val_loss,val_top1,val_top5\n"
            f"1,40,2.0,20.0,2.0,,\n"
            f"2,80,1.5,{100 - train_err},1.4,{100 - test_err},90.0\n")
    assert summarize.main(["--runs", str(runs), "--results", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "summary.csv").open() as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    assert list(rows) == ["plain20", "plain56", "resnet20", "resnet56"]
    assert rows["plain56"] == {"model": "plain56", "iters": "80", "final_train_err": "40.00", "final_test_err": "44.00",
                               "eval_train_err": "", "eval_test_err": "", "train_wall_s": ""}
    curves = (tmp_path / "out" / "curves.csv").read_text().splitlines()
    assert curves[0] == "model,iter,train_err,test_err" and "plain20,40,80.00," in curves


def test_summarize_names_the_missing_run(tmp_path, capsys):
    assert summarize.main(["--runs", str(tmp_path), "--results", str(tmp_path / "out"), "--models", "plain56"]) == 2
    assert "plain56" in capsys.readouterr().err


def test_summarize_compares_at_the_last_common_iteration(tmp_path):
    """A run stopped early (not yet resumed) is compared with the others at the iteration all of them reached."""
    runs = tmp_path / "runs"
    for model, rows in {"plain20": [(40, 20.0, 22.0), (80, 35.0, 30.0)], "plain56": [(40, 15.0, 14.0)]}.items():
        (runs / model).mkdir(parents=True)
        lines = ["epoch,iter,train_top1,val_top1"] + [f"{i + 1},{it},{a},{b}" for i, (it, a, b) in enumerate(rows)]
        (runs / model / "metrics.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert summarize.main(["--runs", str(runs), "--results", str(out), "--models", "plain20", "plain56"]) == 0
    assert (out / "summary.csv").read_text().splitlines()[1:] == ["plain20,80,65.00,70.00,,,", "plain56,40,85.00,86.00,,,"]
    assert (out / "common_iter.csv").read_text().splitlines()[1:] == ["plain20,40,80.00,78.00",
                                                                       "plain56,40,85.00,86.00"]
