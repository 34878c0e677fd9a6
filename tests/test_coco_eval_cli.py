"""tools/eval_coco.py: the scripted contract (--gt --dt --iou-type --out -> stats.json) and its errors (exit 2)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_coco_eval_sample import GT, gt_as_detections, perturbed_detections, reference_stats, _gt

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "eval_coco.py"
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO)


def _main(capsys, *args):
    """The tool's main() in-process (the error cases need no fresh interpreter): (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("eval_coco_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_detections_file_contract(tmp_path):
    gt = _gt()
    dets = perturbed_detections(gt, seed=3)
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    proc = _run("--gt", GT, "--dt", tmp_path / "dt.json", "--iou-type", "bbox", "segm", "--out", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert list(stats) == ["bbox", "segm", "per_category", "ap_unit", "max_dets"] and stats["ap_unit"] == "fraction (0-1)"
    assert stats["max_dets"] == [1, 10, 100]
    for iou_type in ("bbox", "segm"):
        assert list(stats[iou_type]) == KEYS
        expected, _ = reference_stats(gt, dets, iou_type)
        assert stats[iou_type] == expected  # JSON floats round-trip exactly
        assert stats["per_category"][iou_type]["person"]["id"] == 1
        assert set(stats["per_category"][iou_type]["person"]) == {"id", "AP", "AP50"}
    assert "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]" in proc.stdout
    assert "person" in proc.stdout and "bottle" in proc.stdout  # the per-category table


def test_ground_truth_scores_one_through_the_cli(tmp_path, capsys):
    (tmp_path / "dt.json").write_text(json.dumps(gt_as_detections(_gt())))
    code, _, err = _main(capsys, "--gt", GT, "--dt", tmp_path / "dt.json", "--iou-type", "segm", "--out",
                         tmp_path / "s.json", "--backend", "pycocotools")
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["segm"]["AP"] == 1.0


@pytest.mark.parametrize("case, message", [
    ("missing", "detections file not found"),
    ("empty", "detections are empty"),
    ("bad_category", "category_id 4242"),
    ("bad_image", "image_id 77"),
    ("not_json", "not valid JSON"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, case, message):
    det = gt_as_detections(_gt())[0]
    path = tmp_path / "dt.json"
    if case == "empty":
        path.write_text("[]")
    elif case == "bad_category":
        path.write_text(json.dumps([{**det, "category_id": 4242}]))
    elif case == "bad_image":
        path.write_text(json.dumps([{**det, "image_id": 77}]))
    elif case == "not_json":
        path.write_text("{oops")
    code, _, err = _main(capsys, "--gt", GT, "--dt", path, "--iou-type", "bbox", "--out", tmp_path / "s.json")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not (tmp_path / "s.json").exists()


def test_missing_ground_truth_file_exits_2_from_the_shell(tmp_path):
    (tmp_path / "dt.json").write_text("[]")
    proc = _run("--gt", tmp_path / "nope.json", "--dt", tmp_path / "dt.json")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ground-truth file not found")


def test_checkpoint_form_runs_the_model_then_evaluates(tmp_path, capsys):
    import torch
    import yaml

    import resbackbones as rb
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig

    model_cfg = {"num_classes": 80, "backbone": {"name": "resnet18"}, "mask_head": {"enabled": True},
                 "input": {"min_size": [160], "max_size": 224}, "roi_heads": {"score_thresh": 0.0,
                                                                           "detections_per_img": 5}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": model_cfg}))
    model = rb.build_detector(load_config(DetTrainConfig, tmp_path / "cfg.yaml").model)
    torch.save({"model": model.state_dict(), "iteration": 1}, tmp_path / "last.pt")
    images = GT.parent / "images"
    code, out, err = _main(capsys, "--checkpoint", tmp_path / "last.pt", "--config", tmp_path / "cfg.yaml",
                           "--gt", GT, "--images", images, "--iou-type", "bbox", "segm", "--out", tmp_path / "s.json")
    assert code == 0, err
    stats = json.loads((tmp_path / "s.json").read_text())
    assert list(stats)[:2] == ["bbox", "segm"] and list(stats["segm"]) == KEYS
    detections = json.loads((tmp_path / "s.detections.json").read_text())  # beside --out s.json
    assert len(detections) == 6 * 5 and {"bbox", "segmentation", "score"} <= set(detections[0])
    assert "amp: " in out  # the precision the model ran at (auto: bf16 where the hardware has it)
    code, out, err = _main(capsys, "--checkpoint", tmp_path / "last.pt", "--config", tmp_path / "cfg.yaml",
                           "--gt", GT, "--images", images, "--amp", "none", "--out", tmp_path / "fp32.json")
    assert code == 0 and "amp: none (set by --amp)" in out, err
    code, _, err = _main(capsys, "--checkpoint", tmp_path / "last.pt", "--config", tmp_path / "cfg.yaml",
                         "--gt", GT, "--images", images, "--amp", "fp16", "--device", "cpu")
    assert code == 2 and "amp=fp16 is for CUDA" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _main(capsys, "--checkpoint", tmp_path / "missing.pt", "--config", tmp_path / "cfg.yaml",
                         "--gt", GT, "--images", images)
    assert code == 2 and "checkpoint file not found" in err
    code, _, err = _main(capsys, "--checkpoint", tmp_path / "last.pt", "--config", tmp_path / "cfg.yaml",
                         "--gt", GT, "--images", images, "--device", "cuda:99")
    assert code == 2 and "cuda:99" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _main(capsys, "--checkpoint", tmp_path / "last.pt", "--config", tmp_path / "cfg.yaml",
                         "--gt", GT, "--images", images, "--device", "gpu0")
    assert code == 2 and "unknown device 'gpu0'" in err, err
