"""projects/vgg_vs_resnet: run.sh trains each backbone with tools/train_det.py on real BCCD images (a tiny
schedule: 1 iteration on 2 images at 64 px), evaluates, resumes, and writes the summary table with its exact columns.
"""
import csv
import json
import os
import subprocess
import sys

from conftest import REPO, load_project_module, require_shared

PROJECT = REPO / "projects" / "vgg_vs_resnet"
summarize = load_project_module("vgg_vs_resnet", "summarize")
COLUMNS = ["backbone", "AP", "AP50", "params_m", "train_s_per_img", "infer_s_per_img"]


def _run(env_extra):
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", str(PROJECT / "run.sh")], env=env, capture_output=True, text=True, timeout=400)


def test_run_sh_tiny_schedule(tmp_path):
    bccd = require_shared("data/bccd/train.json").parent
    env = {"BCCD": str(bccd), "VVR_RUNS": str(tmp_path / "runs"), "VVR_RESULTS": str(tmp_path / "results"),
           "VVR_BACKBONES": "vgg16 resnet50", "VVR_ITERS": "1", "VVR_TRAIN_LIMIT": "2", "VVR_VAL_LIMIT": "2",
           "VVR_MIN_SIZE": "64", "VVR_THREADS": "1"}
    first = _run(env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    with (tmp_path / "results" / "summary.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [r["backbone"] for r in rows] == ["vgg16", "resnet50"]
    params = {r["backbone"]: float(r["params_m"]) for r in rows}
    assert 14.0 < params["vgg16"] < 20.0 and 23.0 < params["resnet50"] < 30.0  # backbone + small FPN/heads
    for row in rows:
        assert 0.0 <= float(row["AP"]) <= float(row["AP50"]) <= 100.0  # percent (issue 7): eval.json's fraction x 100
        assert float(row["train_s_per_img"]) > 0 and float(row["infer_s_per_img"]) > 0
    details = list(csv.DictReader((tmp_path / "results" / "details.csv").open()))
    assert float(details[0]["backbone_gmacs_224"]) > float(details[1]["backbone_gmacs_224"])  # VGG-16 > ResNet-50
    assert (tmp_path / "results" / "ap_bars.png").is_file()
    result = json.loads((tmp_path / "runs" / "vgg16" / "eval.json").read_text())
    assert result["iteration"] == 1

    (tmp_path / "runs" / "resnet50" / "DONE").unlink()
    second = _run(env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "vgg16: already finished" in second.stdout and "resnet50: resuming" in second.stdout


def test_ap_is_percent_in_the_csvs_and_the_figure(tmp_path, monkeypatch, capsys):
    """Issue 7's contract: AP / AP50 in percent (eval.json's fractions x 100, 2 decimals), the paper's unit; the
    committed results are in it, and --from-csv redraws their figure, titled "(%)", without touching the CSVs."""
    from matplotlib.figure import Figure

    run = tmp_path / "runs" / "vgg16"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"bbox": {"AP": 0.0378, "AP50": 0.117}, "iteration": 100,
                                               "train_seconds": 1421.0, "eval_seconds": 250.0}))
    measured = summarize.read_run(run)
    assert (round(measured["AP"], 6), round(measured["AP50"], 6)) == (3.78, 11.7)
    assert summarize.PAPER_COCO == {"vgg16": (41.5, 21.2), "resnet101": (48.4, 27.2)}

    committed = PROJECT / "results"
    assert (committed / "summary.csv").read_text().splitlines() == [
        ",".join(COLUMNS), "vgg16,3.78,11.70,15.83,7.105,3.473", "resnet50,3.12,10.22,24.81,4.596,0.940",
        "resnet101,0.65,2.52,43.81,6.281,0.853"]
    details = list(csv.DictReader((committed / "details.csv").open()))
    assert [(r["AP"], r["AP50"]) for r in details] == [("3.78", "11.70"), ("3.12", "10.22"), ("0.65", "2.52")]

    titles, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.extend(ax.get_title() for ax in fig.axes),
                                                                  savefig(fig, *a, **k)))
    out = tmp_path / "results"
    assert summarize.main(["--from-csv", str(committed / "details.csv"), "--results", str(out)]) == 0
    assert titles == ["mAP@.5 (%)", "mAP@[.5:.95] (%)"]
    assert sorted(p.name for p in out.iterdir()) == ["ap_bars.png"]
    printed = capsys.readouterr().out
    assert "vgg16      AP   3.78 %  AP50  11.70 %" in printed and "-83 % relative to vgg16" in printed
    assert summarize.main(["--from-csv", str(tmp_path / "none.csv"), "--results", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_run_sh_names_a_missing_dataset(tmp_path):
    result = _run({"BCCD": str(tmp_path / "nowhere"), "VVR_RUNS": str(tmp_path / "runs")})
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "BCCD=" in result.stderr


def test_paper_setting_gpu_configs_load():
    """The GPU configs keep the paper's COCO setting: single-scale 600, lr 0.001 -> 0.0001, RoI pooling, C4 head."""
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig

    vgg = load_config(DetTrainConfig, str(PROJECT / "configs" / "coco" / "frcnn_vgg16_paper.yaml"), [])
    r101 = load_config(DetTrainConfig, str(PROJECT / "configs" / "coco" / "frcnn_r101_c4_paper.yaml"), [])
    for cfg in (vgg, r101):
        assert cfg.model.input.min_size == (600,) and cfg.model.input.max_size == 1000
        assert (cfg.solver.base_lr, cfg.solver.max_iter, cfg.solver.steps) == (0.001, 320000, (240000,))
        assert cfg.model.roi_heads.pooler_type == "RoIPool" and cfg.model.num_classes == 80
    assert (vgg.model.layout, vgg.model.backbone.name, vgg.model.box_head.fc_dim) == ("single", "vgg16", 4096)
    assert (r101.model.layout, r101.model.backbone.name, r101.model.box_head.type) == ("c4", "resnet101", "res5")
