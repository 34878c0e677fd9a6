"""A detector checkpoint scores each label as the category it was trained on (issue 16, silent-wrong case): ground
truth with the same classes under other ids is matched by name (and said so), other classes are refused. Before,
label k was scored against whatever category k was in the new json (AP 6.0 -> 1.0, no warning)."""
import json

import pytest

from conftest import REPO
from resbackbones.evaluation.coco_results import checkpoint_label_mapping
import eval_coco  # noqa: E402
import train_det  # noqa: E402

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}]
STATE = {"label_to_category": {1: 1, 2: 2, 3: 3}, "categories": CATS}
PERMUTED = {1: 3, 2: 1, 3: 2}  # old id -> new id, names kept


def _permuted(categories):
    return [{"id": PERMUTED[c["id"]], "name": c["name"]} for c in categories]


def test_mapping_rules():
    assert checkpoint_label_mapping(STATE, CATS, where="ckpt") == ({1: 1, 2: 2, 3: 3}, None)
    mapping, note = checkpoint_label_mapping(STATE, list(reversed(_permuted(CATS))), where="ckpt")
    assert mapping == {1: 3, 2: 1, 3: 2} and "circle 1->3" in note
    with pytest.raises(ValueError, match="'triangle' \\(id 3\\), which the data does not have"):
        checkpoint_label_mapping(STATE, CATS[:2] + [{"id": 3, "name": "star"}], where="ckpt")
    with pytest.raises(ValueError, match="trained on 3 categories .* the data has 2"):
        checkpoint_label_mapping(STATE, CATS[:2], where="ckpt")
    with pytest.raises(ValueError, match="name 'circle' twice"):
        checkpoint_label_mapping(STATE, CATS[:2] + [{"id": 3, "name": "circle"}], where="ckpt")
    assert checkpoint_label_mapping({}, list(reversed(CATS)), where="ckpt") == ({1: 1, 2: 2, 3: 3}, None)  # no record


def test_eval_coco_checkpoint_on_reordered_ground_truth(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_det.main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(run), "--device",
                           "cpu", "solver.max_iter=1", "data.train.num_images=2", f"data.train.root={tmp_path / 'tr'}",
                           "data.val.num_images=2", f"data.val.root={tmp_path / 'va'}", "train.progress=false"]) == 0
    gt = json.loads((tmp_path / "va" / "annotations.json").read_text())
    moved = dict(gt, categories=_permuted(gt["categories"]),
                 annotations=[dict(a, category_id=PERMUTED[a["category_id"]]) for a in gt["annotations"]])
    (tmp_path / "moved_gt.json").write_text(json.dumps(moved))
    renamed = dict(gt, categories=[dict(c, name=c["name"] + "_x") for c in gt["categories"]])
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    common = ["--checkpoint", str(run / "checkpoints" / "last.pt"), "--config", str(REPO / "configs" / "quickstart.yaml"),
              "--images", str(tmp_path / "va" / "images"), "--device", "cpu", "--amp", "none", "--iou-type", "bbox"]
    out = {}
    for name, gt_file in (("same", tmp_path / "va" / "annotations.json"), ("moved", tmp_path / "moved_gt.json")):
        assert eval_coco.main(["--gt", str(gt_file), *common, "--results", str(tmp_path / f"{name}.json"),
                               "--out", str(tmp_path / f"{name}_stats.json")]) == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "matched to the checkpoint's by name" in capsys.readouterr().out
    assert out["same"], "the untrained detector should still output boxes (scores ~1/4 > 0.05)"
    assert [PERMUTED[d["category_id"]] for d in out["same"]] == [d["category_id"] for d in out["moved"]]
    stats = [json.loads((tmp_path / f"{n}_stats.json").read_text()) for n in ("same", "moved")]
    per_category = [{name: (r["AP"], r["AP50"]) for name, r in s.pop("per_category")["bbox"].items()} for s in stats]
    assert stats[0] == stats[1] and per_category[0] == per_category[1]  # each class its own AP, under its new id
    assert eval_coco.main(["--gt", str(tmp_path / "renamed.json"), *common, "--results",
                           str(tmp_path / "renamed_dets.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "which the data does not have" in err
