"""projects/transfer: run.sh pretrains on real CIFAR-10 images (tools/train_cls.py), exports the backbone, fine-tunes
Faster R-CNN on real BCCD and Mask R-CNN on real DSB2018 nuclei images pretrained and from scratch
(tools/train_det.py), resumes, and writes summary.csv with its exact columns; summarize.py is checked on synthetic
eval.json inputs (rows, order, README blocks, the claims check, the errors).

The run.sh test is a tiny budget (ResNet-50 only, 2 pretraining iterations at 32 px, 2 fine-tune iterations on 2
images at 64 px): it checks the wiring, not the numbers.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_project_module, require_shared

PROJECT = REPO / "projects" / "transfer"
summarize = load_project_module("transfer", "summarize")

COLUMNS = ["dataset", "backbone", "init", "pretrain_epochs", "finetune_iters", "bbox_AP", "bbox_AP50", "segm_AP",
           "segm_AP50"]
TINY = {"TR_BACKBONES": "resnet50", "TR_DSB_BACKBONES": "resnet50", "TR_PX": "32", "TR_EPOCHS": "1",
        "TR_BATCH": "16", "TR_TRAIN_SUBSET": "32", "TR_VAL_SUBSET": "16", "TR_DET_ITERS": "2",
        "TR_DET_TRAIN_LIMIT": "2", "TR_DET_VAL_LIMIT": "2", "TR_BCCD_MIN_SIZE": "64", "TR_DSB_MIN_SIZE": "64",
        "TR_THREADS": "1"}


def _run(env_extra):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run(["bash", str(PROJECT / "run.sh")], env=env, capture_output=True, text=True, timeout=600)


def _rows(path):
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_run_sh_tiny_budget_pretrains_exports_finetunes_resumes_and_summarizes(tmp_path):
    data = require_shared("data")
    for folder in ("cifar10/train.tar", "bccd/train.json", "dsb2018_nuclei/train.json"):
        require_shared(f"data/{folder}")
    runs, results = tmp_path / "runs", tmp_path / "results"
    env = dict(TINY, CIFAR10=str(data / "cifar10"), BCCD=str(data / "bccd"), DSB=str(data / "dsb2018_nuclei"),
               TR_RUNS=str(runs), TR_RESULTS=str(results))
    first = _run(env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    columns, rows = _rows(results / "summary.csv")
    assert columns == COLUMNS
    assert [(r["dataset"], r["backbone"], r["init"]) for r in rows] == [
        ("bccd", "resnet50", "scratch"), ("bccd", "resnet50", "pretrained"),
        ("dsb", "resnet50", "scratch"), ("dsb", "resnet50", "pretrained")]
    for row in rows:
        assert row["finetune_iters"] == "2" and row["pretrain_epochs"] == ("1" if row["init"] == "pretrained" else "0")
        assert 0.0 <= float(row["bbox_AP"]) <= 100.0  # percent (issue 13): eval.json's fraction x 100
        assert (row["segm_AP"] == "") == (row["dataset"] == "bccd")  # box-only BCCD: segm empty
    assert (results / "ap_bars.png").stat().st_size > 10_000
    # The export carries its pretraining (epochs, top-1 on the test images) and the CIFAR normalisation the
    # pretrained detector adopted; DSB is evaluated with maxDets raised for its crowded images.
    export = runs / "pretrain" / "resnet50" / "backbone.safetensors"
    meta = summarize.pretraining_of(str(export), runs)
    assert meta["pretrain_epochs"] == 1 and meta["pretrain_px"] == "32" and float(meta["pretrain_top1"]) >= 0
    assert "input RGB, mean [0.4914, 0.4822, 0.4465]" in first.stdout
    assert json.loads((runs / "dsb" / "resnet50_pretrained" / "eval.json").read_text())["max_dets"] == [1, 10, 400]

    # Finished steps are skipped; unfinished ones (no DONE, a checkpoint) continue with --resume. A finished
    # pretraining resumed again still exports its measured top-1.
    (runs / "pretrain" / "resnet50" / "DONE").unlink()
    (runs / "bccd" / "resnet50_scratch" / "DONE").unlink()
    export.unlink()
    second = _run(env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resnet50: resuming" in second.stdout and "resnet50_scratch: resuming" in second.stdout
    assert "resnet50_pretrained: already finished" in second.stdout
    assert summarize.pretraining_of(str(export), runs)["pretrain_top1"] == meta["pretrain_top1"]
    assert [r["finetune_iters"] for r in _rows(results / "summary.csv")[1]] == ["2"] * 4


def test_run_sh_two_chains_then_one_summary(tmp_path):
    """TR_JOBS=2: the first backbone's chain in the background (its own log), the others in the foreground, then
    one summary of both (scratch only here: no pretraining needed)."""
    bccd = require_shared("data/bccd/train.json").parent
    env = {"BCCD": str(bccd), "TR_JOBS": "2", "TR_BACKBONES": "vgg16 resnet50", "TR_DATASETS": "bccd",
           "TR_INITS": "scratch", "TR_DET_ITERS": "1", "TR_DET_TRAIN_LIMIT": "2", "TR_DET_VAL_LIMIT": "2",
           "TR_BCCD_MIN_SIZE": "64", "TR_RUNS": str(tmp_path / "runs"), "TR_RESULTS": str(tmp_path / "results")}
    result = _run(env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "vgg16_scratch: training" in (tmp_path / "runs" / "chain_vgg16.log").read_text()
    assert [(r["backbone"], r["init"]) for r in _rows(tmp_path / "results" / "summary.csv")[1]] == [
        ("vgg16", "scratch"), ("resnet50", "scratch")]


@pytest.mark.parametrize("env, message", [
    ({"TR_DATASETS": "coco"}, "TR_DATASETS: unknown dataset 'coco'"),
    ({"TR_INITS": "imagenet"}, "TR_INITS: unknown init 'imagenet'"),
    ({"TR_BACKBONES": "resnet51"}, "no configs/pretrain_resnet51.yaml"),
    ({"TR_JOBS": "3"}, "TR_JOBS must be 1 or 2"),
    ({"TR_JOBS": "2", "TR_BACKBONES": "resnet50"}, "TR_JOBS=2 needs at least two TR_BACKBONES"),
    ({"TR_DET_ITERS": "1k"}, "TR_DET_ITERS must be a whole number, got '1k'"),
    ({"TR_BACKBONES": "resnet101", "TR_DSB_BACKBONES": "resnet50"}, "'resnet50' is fine-tuned pretrained but not pretrained"),
])
def test_run_sh_refuses_bad_settings_in_one_line(tmp_path, env, message):
    result = _run(dict(env, TR_RUNS=str(tmp_path / "runs")))
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_vgg_vs_resnet_pretrained_protocol_is_this_study(tmp_path):
    """projects/vgg_vs_resnet's VVR_PROTOCOL=pretrained runs this run.sh (BCCD, pretrained rows); its checks apply."""
    env = dict(os.environ, PYTHON=sys.executable, VVR_PROTOCOL="pretrained", VVR_BACKBONES="vgg16 resnet51",
               TR_RUNS=str(tmp_path / "runs"))
    result = subprocess.run(["bash", str(REPO / "projects" / "vgg_vs_resnet" / "run.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "TR_BACKBONES: no configs/pretrain_resnet51.yaml" in result.stderr
    env["VVR_PROTOCOL"] = "imagenet"
    result = subprocess.run(["bash", str(REPO / "projects" / "vgg_vs_resnet" / "run.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "VVR_PROTOCOL='imagenet' is unknown" in result.stderr


def test_run_sh_names_a_missing_dataset(tmp_path):
    result = _run({"BCCD": str(tmp_path / "nowhere"), "TR_INITS": "scratch", "TR_RUNS": str(tmp_path / "runs")})
    assert result.returncode == 2 and "nowhere/train.json" in result.stderr and "BCCD=" in result.stderr


# -- summarize.py on synthetic runs ----------------------------------------------------------------------------------
def _fake_export(path, epochs, top1):
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path), metadata={
        "epochs": str(epochs), "val_top1": f"{top1:.2f}",
        "rb.notes": "\"tools/train_cls.py: recipe imagenet, crop 48 px, options {}\""})


def _fake_run(runs, dataset, name, bbox, segm=None, iters=1000, weights=""):
    run = runs / dataset / name
    run.mkdir(parents=True)
    result = {"bbox": {"AP": bbox[0], "AP50": bbox[1]}, "iteration": iters, "train_seconds": 12.5,
              "eval_seconds": 3.0, "amp": "bf16", "max_dets": [1, 10, 400] if dataset == "dsb" else [1, 10, 100]}
    if segm:
        result["segm"] = {"AP": segm[0], "AP50": segm[1]}
    (run / "eval.json").write_text(json.dumps(result))
    (run / "config.yaml").write_text(f"model:\n  backbone:\n    weights: '{weights}'\n")


def _synthetic_study(tmp_path):
    runs = tmp_path / "runs"
    exports = {b: runs / "pretrain" / b / "backbone.safetensors" for b in ("vgg16", "resnet50", "resnet101")}
    for backbone, top1 in (("vgg16", 71.0), ("resnet50", 80.5), ("resnet101", 82.25)):
        _fake_export(exports[backbone], 10, top1)
    aps = {"vgg16": 0.20, "resnet50": 0.30, "resnet101": 0.35}
    for backbone, ap in aps.items():
        _fake_run(runs, "bccd", f"{backbone}_pretrained", (ap, ap + 0.3), weights=str(exports[backbone]))
        _fake_run(runs, "bccd", f"{backbone}_scratch", (ap / 3, ap))
    _fake_run(runs, "dsb", "resnet50_pretrained", (0.25, 0.5), (0.2625, 0.55), weights=str(exports["resnet50"]))
    _fake_run(runs, "dsb", "resnet50_scratch", (0.1, 0.3), (0.125, 0.3))
    (runs / "dsb" / "resnet101_scratch").mkdir()  # started, not finished: listed as pending
    return runs


def test_summarize_rows_columns_order_and_percent(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    titles, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.extend(ax.get_title() for ax in fig.axes),
                                                                  savefig(fig, *a, **k)))
    runs = _synthetic_study(tmp_path)
    assert summarize.main(["--runs", str(runs), "--results", str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1:] == [  # AP in percent (issue 13's contract): eval.json's fractions x 100, 2 decimals
        "bccd,vgg16,scratch,0,1000,6.67,20.00,,", "bccd,vgg16,pretrained,10,1000,20.00,50.00,,",
        "bccd,resnet50,scratch,0,1000,10.00,30.00,,", "bccd,resnet50,pretrained,10,1000,30.00,60.00,,",
        "bccd,resnet101,scratch,0,1000,11.67,35.00,,", "bccd,resnet101,pretrained,10,1000,35.00,65.00,,",
        "dsb,resnet50,scratch,0,1000,10.00,30.00,12.50,30.00",
        "dsb,resnet50,pretrained,10,1000,25.00,50.00,26.25,55.00"]
    details = _rows(tmp_path / "out" / "details.csv")[1]
    assert (details[-1]["pretrain_top1"], details[-1]["pretrain_px"], details[-1]["max_dets"]) == ("80.50", "48", "1 10 400")
    assert [details[-1][k] for k in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")] == ["25.00", "50.00", "26.25",
                                                                                         "55.00"]
    assert (tmp_path / "out" / "ap_bars.png").stat().st_size > 10_000
    assert titles == ["BCCD (Faster R-CNN): bbox AP (%)", "DSB2018 nuclei (Mask R-CNN): bbox AP (%)",
                      "DSB2018 nuclei (Mask R-CNN): segm AP (%)"]
    out = capsys.readouterr().out
    assert "pending (no eval.json yet): dsb/resnet101_scratch" in out
    assert out.count("**holds**") == 3


def test_summarize_fills_readme_blocks_and_reports_failed_claims(tmp_path, capsys):
    runs = _synthetic_study(tmp_path)
    _fake_run(runs, "bccd", "resnet101_pretrained_", (0.0, 0.0))  # not <backbone>_<init>: refused below
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- transfer:claims -->\nold\n<!-- /transfer:claims -->\n"
                      "<!-- transfer:vgg_vs_resnet -->\n<!-- /transfer:vgg_vs_resnet -->\n"
                      "<!-- transfer:table -->\n(no finished runs yet)\n<!-- /transfer:table -->\nend\n")
    assert summarize.main(["--runs", str(runs), "--results", str(tmp_path / "out"), "--readme", str(readme)]) == 2
    assert "folder name must be <backbone>_<init>" in capsys.readouterr().err
    (runs / "bccd" / "resnet101_pretrained_" / "eval.json").unlink()
    (runs / "bccd" / "resnet101_pretrained_").rename(runs / "bccd" / "ignored")  # no '_': not a run folder
    # ResNet-50 pretrained below its scratch run on BCCD: that claim is reported as not holding.
    (runs / "bccd" / "resnet50_pretrained" / "eval.json").write_text(json.dumps(
        {"bbox": {"AP": 0.05, "AP50": 0.1}, "iteration": 1000}))
    assert summarize.main(["--runs", str(runs), "--results", str(tmp_path / "out"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- transfer:claims -->\n- ResNet-50 on BCCD") and text.endswith("end\n")
    # Percent throughout (issue 13, the paper's unit), labelled in every header and in a note under each table.
    assert "pretrained bbox AP > scratch: **does NOT hold** (AP 5.00 % vs 10.00 %)" in text
    assert "| ResNet-101 | 35.00 | 65.00 | +15.00 (+75 %) | 76.4 | 73.8 | 48.4 | 27.2 |" in text
    assert "| paper gain ResNet-101 vs VGG-16 | | | | +3.2 | +3.4 | +6.9 (+17 %) | +6.0 (+28 %) |" in text
    assert "| BCCD bbox AP (%) | BCCD AP50 (%) | AP vs VGG-16 (points) | paper VOC07 mAP (%, T7) |" in text
    assert "| bbox AP (%) | bbox AP50 (%) | segm AP (%) | segm AP50 (%) | AP gain over scratch (points) |" in text
    assert ("| dsb | ResNet-50 | pretrained | 10, 48 px, 80.50 % | 1000 | 25.00 | 50.00 | 26.25 | 55.00 | "
            "+13.75 (segm) |") in text
    note = "AP in percent (COCOeval's fraction x 100; each run's eval.json keeps the fractions)"
    assert text.count(note) == 2 and "fraction 0-1" not in text and "(0-1)" not in text


@pytest.mark.parametrize("case, message", [
    ("no_runs", "runs folder"), ("nothing_finished", "no finished fine-tuning run"),
    ("missing_export", "backbone weights"), ("not_an_export", "no 'epochs' in its metadata"),
])
def test_summarize_errors_name_the_file(tmp_path, capsys, case, message):
    runs = tmp_path / "runs"
    if case == "nothing_finished":
        (runs / "bccd" / "resnet50_scratch").mkdir(parents=True)
    elif case == "missing_export":
        _fake_run(runs, "bccd", "resnet50_pretrained", (0.1, 0.2), weights=str(tmp_path / "gone.safetensors"))
    elif case == "not_an_export":
        from safetensors.torch import save_file
        import torch

        save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        _fake_run(runs, "bccd", "resnet50_pretrained", (0.1, 0.2), weights=str(tmp_path / "plain.safetensors"))
    assert summarize.main(["--runs", str(runs), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
