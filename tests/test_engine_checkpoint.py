"""Atomic checkpoints, pickled-code refusal, RNG round trip, EMA, metrics files."""
import csv
import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from resbackbones.engine.checkpoint import (CheckpointError, CheckpointManager, find_last_checkpoint,
                                            find_resume_checkpoint, gathered_rng_state, load_checkpoint,
                                            restore_rng_state, rng_state, save_atomic, set_rng_state)
from resbackbones.engine.ema import ModelEMA
from resbackbones.engine.metrics_log import MetricsLogger, plot_error_curves


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_atomic({"model": {}, "rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_per_rank_rng_list_and_legacy_single_dict(tmp_path):
    """Checkpoints store one RNG state per rank (seed + rank differ); a rank restores its own entry, and a legacy
    checkpoint's single dict is applied to every rank."""
    states = []
    for seed in (10, 11):  # what ranks 0 and 1 would hold
        torch.manual_seed(seed)
        states.append(gathered_rng_state()[0])  # one process: a list of one
    save_atomic({"model": {}, "rng": states}, tmp_path / "c.pt")
    saved = load_checkpoint(tmp_path / "c.pt")["rng"]
    draws = []
    for rank in (0, 1):
        restore_rng_state(saved, rank)
        draws.append(torch.rand(1).item())
    torch.manual_seed(11)
    assert draws[1] == torch.rand(1).item() and draws[0] != draws[1]
    for rank in (0, 1):
        restore_rng_state(states[1], rank)  # legacy: one dict
        assert torch.rand(1).item() == draws[1]


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_atomic({"model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    save_atomic({"model": {"w": torch.zeros(3)}}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.zeros(3))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resbackbones_pwned",))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load checkpoint .*evil.pt"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/resbackbones_pwned")


def test_truncated_and_missing_checkpoints_named(tmp_path):
    save_atomic({"model": {"w": torch.ones(1000)}}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn.pt"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found: .*gone.pt"):
        load_checkpoint(tmp_path / "gone.pt")


def test_manager_tracks_best_and_find_last(tmp_path):
    manager = CheckpointManager(tmp_path, metric="val_top1", keep_every=2)
    assert find_last_checkpoint(tmp_path) is None
    for epoch, acc in ((1, 50.0), (2, 60.0), (3, 55.0)):
        manager.save({"model": {"e": torch.tensor(epoch)}}, metrics={"val_top1": acc}, epoch=epoch)
    assert load_checkpoint(tmp_path / "best.pt")["model"]["e"].item() == 2
    assert load_checkpoint(tmp_path / "last.pt")["model"]["e"].item() == 3
    assert (tmp_path / "epoch_2.pt").is_file() and not (tmp_path / "epoch_3.pt").exists()
    assert find_last_checkpoint(tmp_path) == tmp_path / "last.pt"


def test_one_resume_rule_for_both_trainers(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert find_resume_checkpoint(tmp_path, True) == (
        None, f"resume: no checkpoint in {ckpts}, starting from scratch")
    save_atomic({"model": {}}, tmp_path / "last.pt")  # train_det before the shared layout
    path, note = find_resume_checkpoint(tmp_path, True)
    assert path == tmp_path / "last.pt" and note.startswith(f"note: {path} is in the layout of train_det before")
    for name in ("iter_20.pt", "iter_100.pt", "epoch_3.pt"):
        save_atomic({"model": {}}, ckpts / name)
    assert find_resume_checkpoint(tmp_path, True) == (ckpts / "iter_100.pt", "")  # the highest number
    save_atomic({"model": {}}, ckpts / "last.pt")
    assert find_resume_checkpoint(tmp_path, True) == (ckpts / "last.pt", "")
    assert find_resume_checkpoint(tmp_path, str(ckpts / "iter_20.pt")) == (ckpts / "iter_20.pt", "")


def test_ema_tracks_weights():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.5, warmup_steps=0)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 1.0)


def test_metrics_files_and_resume_truncation(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, columns=("epoch", "train_loss", "train_top1", "val_top1"))
    for epoch in (1, 2, 3):
        logger.log({"epoch": epoch, "train_loss": 2.0 / epoch, "train_top1": 10.0 * epoch, "val_top1": 9.0 * epoch})
    again = MetricsLogger(tmp_path, tensorboard=False, columns=("epoch",))
    again.resume(2)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2]
    assert plot_error_curves(again.rows, tmp_path / "curves.png").stat().st_size > 1000
