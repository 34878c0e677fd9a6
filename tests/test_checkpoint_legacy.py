"""A run folder of tools/train_det.py from before the shared checkpoint layout (issue 15 step 11): OUTPUT/last.pt
with the keys train_det wrote then (no task, no config, one RNG dict for all ranks) still resumes, evaluates and
predicts; the new checkpoints go to OUTPUT/checkpoints/ and the old file is left as it was."""
import json

import pytest
import torch

from conftest import REPO, tiny_train_det_args
import predict  # noqa: E402
import train_det  # noqa: E402

# What tools/train_det.py stored in OUTPUT/last.pt before checkpoints/ (det_trainer.py at f2ab3b1).
LEGACY_KEYS = ("model", "optimizer", "scheduler", "scaler", "iteration", "train_seconds", "rng", "label_to_category",
               "categories")


def to_legacy(state):
    """A checkpoint of today's schema in the layout of LEGACY_KEYS."""
    flat = dict(state, scaler=state["scaler"] or {}, train_seconds=state["trainer"]["train_seconds"],
                iteration=state["trainer"]["iteration"], **state["extras"])
    return {key: flat[key] for key in LEGACY_KEYS}


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory):
    """A 2-iteration run turned into the old layout: OUTPUT/{config.yaml, last.pt}, no checkpoints/."""
    root = tmp_path_factory.mktemp("legacy")
    data, out = root / "shapes", root / "run"
    assert train_det.main(tiny_train_det_args(data, out, "solver.max_iter=2")) == 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    legacy = to_legacy(state)
    legacy["rng"] = state["rng"][0]  # one dict, applied to every rank
    torch.save(legacy, out / "last.pt")
    for path in (out / "checkpoints").iterdir():
        path.unlink()
    (out / "checkpoints").rmdir()
    return data, out


def test_resume_continues_from_the_legacy_iteration(legacy_run, capsys):
    data, out = legacy_run
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert train_det.main(tiny_train_det_args(data, out, "solver.max_iter=3", "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"note: {out / 'last.pt'} is in the layout of train_det before checkpoints/" in printed
    assert f"resumed from {out / 'last.pt'}: iteration 2" in printed
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3 and state["task"] == "det" and state["config"]["solver"]["max_iter"] == 3
    assert set(state["extras"]) >= {"label_to_category", "categories", "config_changes"}
    assert (out / "last.pt").read_bytes() == before  # read, never written again
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3]


def test_eval_only_and_predict_on_the_legacy_checkpoint(legacy_run, tmp_path):
    data, out = legacy_run
    legacy = out / "last.pt"
    assert train_det.main(tiny_train_det_args(data, out, "--eval-only", "--weights", str(legacy))) == 0
    report = json.loads((out / "last.eval.json").read_text())
    assert report["checkpoint"] == str(legacy) and "AP" in report["bbox"]
    # predict rebuilds the model from the run's config.yaml beside the checkpoint (the file records none)
    assert predict.main(["--checkpoint", str(legacy), "--images", str(data / "val" / "images"), "--output",
                         str(tmp_path / "pred"), "--score-thresh", "0", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3
