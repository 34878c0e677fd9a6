"""train_cls --weights CKPT --export F (issue 16): exporting an existing checkpoint without retraining writes what the
run's own --export wrote at its end (every tensor, every metadata key), trains nothing and writes nothing in the run
folder; flags that would change the run are refused in one line."""

import pytest

from conftest import REPO
from resbackbones.data.synthetic_cls import write_image_folder
from resbackbones.weights import load_with_metadata
import train_cls  # noqa: E402

TINY = ["solver.epochs=2", "solver.batch_size=8", "data.num_workers=0", "train.progress=false", "train.tensorboard=false",
        "model.backbone.options.widths=[4,8,8]", "ema.enabled=true", "ema.warmup_steps=0", "ema.decay=0.5", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    data = write_image_folder(root / "data", train_per_class=2, val_per_class=1, image_size=32)
    out = root / "run"
    assert train_cls.main(["--data", str(data), "--output", str(out), "--export", str(root / "end.safetensors"),
                           *TINY]) == 0
    return root, data, out


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_export_of_last_checkpoint_equals_export_at_end_of_training(run, tmp_path, capsys):
    root, _, out = run
    before = _snapshot(out)
    again = tmp_path / "again.safetensors"
    assert train_cls.main(["--weights", str(out / "checkpoints" / "last.pt"), "--export", str(again)]) == 0
    assert "exported backbone weights" in capsys.readouterr().out
    ref_state, ref_meta = load_with_metadata(root / "end.safetensors")
    state, meta = load_with_metadata(again)
    assert state.keys() == ref_state.keys()
    assert [k for k in ref_state if not (state[k] == ref_state[k]).all()] == []  # EMA weights, as the run exported
    assert meta == ref_meta and meta["epochs"] == "2" and "val_top1" in meta and "rb.pixel_mean" in meta
    assert _snapshot(out) == before  # nothing trained, nothing written in the run folder


def test_export_of_best_checkpoint_and_moved_data(run, tmp_path, capsys):
    root, data, out = run
    moved = tmp_path / "moved"
    data.rename(moved)
    try:
        best = str(out / "checkpoints" / "best.pt")
        assert train_cls.main(["--weights", best, "--export", str(tmp_path / "bb.safetensors")]) == 2
        assert str(data) in _error(capsys)
        assert train_cls.main(["--weights", best, "--export", str(tmp_path / "bb.safetensors"),
                               "--data", str(moved)]) == 0
    finally:
        moved.rename(data)
    _, meta = load_with_metadata(tmp_path / "bb.safetensors")
    assert meta["rb.source"] == '"resbackbones train_cls"' and meta["data"] == str(moved)  # where top-1 was measured


@pytest.mark.parametrize("extra, named", [
    (["--config", str(REPO / "configs" / "cls" / "cifar_resnet20.yaml"), "--eval-only"], "--config"),
    (["--epochs", "3"], "--epochs"), (["--output", "elsewhere"], "--output"),
])
def test_flags_that_would_change_the_run_are_refused(run, tmp_path, capsys, extra, named):
    _, _, out = run
    args = ["--weights", str(out / "checkpoints" / "last.pt"), "--export", str(tmp_path / "x.safetensors"), *extra]
    assert train_cls.main(args) == 2
    assert named in _error(capsys) and not (tmp_path / "x.safetensors").exists()


def test_export_never_over_its_checkpoint(run, capsys):
    _, _, out = run
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert train_cls.main(["--weights", str(last), "--export", str(last)]) == 2
    assert "destroy the input" in _error(capsys) and last.read_bytes() == before
