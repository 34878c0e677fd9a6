"""tools/train_det.py keeps what detectron2 users look for: AP / AP50 per category in eval.json and in the final
console report, the evaluated detections in OUTPUT/inference/coco_instances_results.json (COCO.loadRes reads them),
OUTPUT/checkpoints/best.pt by the first iou type's AP when train.eval_period > 0, and "resumed from ...: iteration N"
on --resume.
Tiny quickstart runs (Mask R-CNN on 6 shapes images, 3 val images)."""
import contextlib
import io
import json

import pytest
import torch

from conftest import REPO, tiny_train_det_args
from resbackbones.engine.checkpoint import CheckpointManager
import train_det  # noqa: E402



@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes_reports")


def _tiny(root, out, *extra):
    return tiny_train_det_args(root, out, "model.roi_heads.score_thresh=0.0", *extra)


def test_per_category_results_json_best_and_resume(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=2", "train.eval_period=1")) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    names = {c["name"] for c in json.loads((data_root / "val" / "annotations.json").read_text())["categories"]}
    # 1. per category, both iou types, fractions; the console prints the same tables
    for iou in ("bbox", "segm"):
        report = result["per_category"][iou]
        assert set(report) == names and all(set(r) == {"id", "AP", "AP50"} for r in report.values())
        assert all(-1.0 <= r["AP"] <= r["AP50"] <= 1.0 or r["AP"] == -1.0 for r in report.values())
        assert f"per-category {iou} AP (COCO AP@[.5:.95] and AP@.5, fractions 0-1)" in printed
    assert result["ap_unit"] == "fraction (0-1)"
    # 2. the detections that were scored, readable by pycocotools
    from pycocotools.coco import COCO

    results_file = out / "inference" / "coco_instances_results.json"
    assert result["coco_results"] == "inference/coco_instances_results.json"
    detections = json.loads(results_file.read_text())
    assert detections and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(detections[0])
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(data_root / "val" / "annotations.json")).loadRes(str(results_file))
    assert len(loaded.anns) == len(detections)
    # 3. best.pt: the best bbox AP of the evaluations at iterations 1 and 2 (ties keep the earlier one)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["iter"], r["bbox_AP"]) for r in rows if "bbox_AP" in r]
    assert [i for i, _ in evals] == [1, 2]
    best_iter, best_ap = max(evals, key=lambda e: (e[1], -e[0]))  # metrics.jsonl rounds to 5 digits
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert (best["best_metric_name"], best["best_iteration"], best["iteration"]) == ("bbox_AP", best_iter, best_iter)
    assert best["best_metric"] == pytest.approx(best_ap, abs=1e-5)
    best_ap = best["best_metric"]
    assert result["best"] == {"checkpoint": "checkpoints/best.pt", "best_metric": best_ap,
                              "best_metric_name": "bbox_AP", "best_iteration": best_iter}
    saved = out / "checkpoints" / "best.pt"
    assert f"best bbox AP so far: {best_ap:.4f} (fraction 0-1) at iteration {best_iter}: saved {saved}" in printed
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["iteration"] == 2 and last["best_metric"] == best_ap  # a resumed run knows the best so far
    # 4. --resume says where it continues from
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=3", "train.eval_period=1", "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoints' / 'last.pt'}: iteration 2" in printed
    assert json.loads((out / "eval.json").read_text())["iteration"] == 3


def test_no_best_without_periodic_evaluation_and_resume_of_an_empty_folder(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=1", "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"resume: no checkpoint in {out / 'checkpoints'}, starting from scratch" in printed
    assert not (out / "checkpoints" / "best.pt").exists() and "best" not in json.loads((out / "eval.json").read_text())
    assert (out / "inference" / "coco_instances_results.json").is_file()
    # --overwrite removes the files of the run, the detections folder included
    (out / "mine.txt").write_text("kept")
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=1", "--overwrite")) == 0
    assert "inference" in capsys.readouterr().out and (out / "mine.txt").read_text() == "kept"


def test_best_tracking_of_the_shared_checkpoint_manager(tmp_path):
    best = CheckpointManager(tmp_path, metric="segm_AP")
    state = {"model": {"w": torch.zeros(1)}}
    assert not best.save(state, metrics={"segm_AP": float("nan")}, iteration=1)
    assert best.save(state, metrics={"segm_AP": 0.2}, iteration=2)
    assert not best.save(state, metrics={"segm_AP": 0.2}, iteration=3)  # a tie keeps the earlier one
    assert not best.save(state, metrics={"bbox_AP": 0.9}, iteration=4)
    assert best.save(state, metrics={"segm_AP": 0.3}, iteration=5)
    assert best.state() == {"best_metric": 0.3, "best_metric_name": "segm_AP", "best_iteration": 5}
    assert torch.load(tmp_path / "best.pt", weights_only=True)["best_iteration"] == 5
    other = CheckpointManager(tmp_path, metric="bbox_AP")
    other.load_best(best.state())  # another metric's record is not this one's best
    assert other.best is None
