"""tools/train_det.py end to end on a tiny slice of the quickstart config: checkpoint + metrics + eval.json,
bit-identical resume, one-line config / data errors with exit code 2, predict.py on the result."""
import json
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

import predict  # noqa: E402
import train_det  # noqa: E402
from conftest import tiny_train_det_args  # noqa: E402

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _tiny(root, out, *extra):
    return tiny_train_det_args(root, out, *extra)


def test_train_eval_predict(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=2")) == 0
    for name in ("checkpoints/last.pt", "config.yaml", "metrics.csv", "metrics.jsonl", "curves.png", "eval.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    result = json.loads((out / "eval.json").read_text())
    assert result["iteration"] == 2 and set(result["bbox"]) >= {"AP", "AP50", "AP75", "APs", "ARl"}
    assert "AP" in result["segm"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2]
    assert {"loss_mask", "loss_classifier", "loss_objectness", "lr"} <= set(rows[0])
    assert rows[-1]["iter"] == 2 and "segm_AP" in rows[-1]
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["iteration"] == 2 and state["label_to_category"] == {1: 1, 2: 2, 3: 3} and state["task"] == "det"
    assert state["config"] == yaml.safe_load((out / "config.yaml").read_text())  # the model needs no file beside
    assert "bbox AP" in capsys.readouterr().out
    # config.yaml names the normalisation used (no weights here: torchvision's ImageNet RGB)
    used = yaml.safe_load((out / "config.yaml").read_text())["model"]["input"]
    assert (used["format"], used["image_mean"], used["image_std"]) == ("RGB", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # --eval-only on the checkpoint reproduces the final numbers, in last.eval.json beside it (eval.json stays)
    before = {name: (out / name).read_bytes() for name in ("eval.json", "config.yaml", "metrics.jsonl")}
    assert train_det.main(_tiny(data_root, out, "--eval-only", "--weights", str(last))) == 0
    assert {name: (out / name).read_bytes() for name in before} == before
    again = json.loads((out / "checkpoints" / "last.eval.json").read_text())
    assert again["bbox"] == result["bbox"] and again["segm"] == result["segm"]
    assert again["amp"] == result["amp"] in ("none", "bf16")  # the precision the stats were measured at
    # a config with another model (FPN width): the checkpoint's recorded model is evaluated, and a note says so
    capsys.readouterr()
    assert train_det.main(_tiny(data_root, out, "--eval-only", "--weights", str(last),
                                "model.fpn.out_channels=32")) == 0
    printed = capsys.readouterr().out
    assert f"note: the model is rebuilt from the config recorded in {last}; not used from the given config: " \
           f"model.fpn.out_channels\n" in printed
    assert json.loads((out / "checkpoints" / "last.eval.json").read_text())["bbox"] == result["bbox"]
    # ...but a checkpoint that records no config (train_det before it did) is rebuilt from the given config:
    # one line naming the file and the shapes
    state.pop("config")
    torch.save(state, tmp_path / "bare.pt")
    assert train_det.main(_tiny(data_root, out, "--eval-only", "--weights", str(tmp_path / "bare.pt"),
                                "model.fpn.out_channels=32")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "bare.pt" in err and "of another shape" in err and "(64, 64, 1, 1) vs (32, 64, 1, 1)" in err, err
    # predict.py draws PNGs
    assert predict.main(["--checkpoint", str(last), "--images", str(data_root / "val" / "images"),
                         "--output", str(tmp_path / "pred"), "--score-thresh", "0", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3


def test_resume_continues_bit_identically(data_root, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_det.main(_tiny(data_root, straight, "solver.max_iter=3")) == 0
    assert train_det.main(_tiny(data_root, split, "solver.max_iter=2")) == 0
    assert train_det.main(_tiny(data_root, split, "--resume", "solver.max_iter=3")) == 0
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3]


def test_config_error_names_key(tmp_path, capsys):
    out = ["--output", str(tmp_path / "run")]  # never the config's default output/quickstart (hermetic tests)
    assert train_det.main(["--config", QUICKSTART, *out, "solver.max_iters=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "solver.max_iters" in err and "solver.max_iter'" in err
    assert train_det.main(["--config", QUICKSTART, *out, "model.backbone.name=resnet51"]) == 2
    assert "resnet51" in capsys.readouterr().err


def test_missing_dataset_is_one_line(tmp_path, capsys):
    code = train_det.main(["--config", QUICKSTART, "--output", str(tmp_path), "data.val.kind=coco",
                           f"data.val.ann_file={tmp_path / 'nope.json'}", f"data.val.image_root={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.json" in err


def _tiny_cfg(root, out):
    """The DetTrainConfig that tiny_train_det_args describes (its key=value part)."""
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig

    overrides = [a for a in tiny_train_det_args(root, out) if "=" in a and not a.startswith("--")]
    return load_config(DetTrainConfig, QUICKSTART, [*overrides, f"train.output_dir={out}", "train.device=cpu"])


def test_eval_only_builds_no_optimizer_and_writes_nothing(data_root, tmp_path):
    from resbackbones.engine.det_trainer import DetTrainer

    out = tmp_path / "run"
    trainer = DetTrainer(_tiny_cfg(data_root, out), eval_only=True)
    assert not hasattr(trainer, "optimizer") and trainer.hooks == [] and trainer.train_set is None
    assert not out.exists()


def test_non_finite_weights_are_not_saved(data_root, tmp_path):
    from resbackbones.engine.det_trainer import DetTrainer
    from resbackbones.engine.tool_errors import TrainingDiverged

    out = tmp_path / "run"
    trainer = DetTrainer(_tiny_cfg(data_root, out))
    trainer.save()
    good = (out / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        trainer.model.roi_heads.box_predictor.bbox_pred.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite .*roi_heads\.box_predictor\.bbox_pred\.bias "
                                               r"and 0 more.*the last good checkpoint is kept: .*last\.pt"):
        trainer.save()
    assert (out / "checkpoints" / "last.pt").read_bytes() == good


def test_keep_every_and_tensorboard(data_root, tmp_path):
    """train.keep_every counts iterations for detection: checkpoints/iter_N.pt at each checkpoint whose iteration N
    is a multiple; train.tensorboard=false writes no event files, true writes them (scalars of metrics.csv)."""
    out = tmp_path / "kept"
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=4", "train.checkpoint_period=1",
                                "train.keep_every=2", "train.tensorboard=false")) == 0
    names = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert names == ["iter_2.pt", "iter_4.pt", "last.pt"]  # eval_period 0: no best.pt
    assert torch.load(out / "checkpoints" / "iter_2.pt", weights_only=True)["iteration"] == 2
    assert not (out / "tensorboard").exists()
    board = tmp_path / "board"
    assert train_det.main(_tiny(data_root, board, "solver.max_iter=1", "train.tensorboard=true")) == 0
    assert list((board / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((board / "checkpoints").glob("iter_*.pt"))  # keep_every 0: last.pt / best.pt only


def test_periods_in_epochs_for_detection(data_root, tmp_path):
    """train.period_unit=epoch: eval_period and keep_every count epochs in detection too, an epoch being
    ceil(6 train images / batch 2) = 3 iterations: best.pt from the evaluation at iteration 3, iter_3.pt and
    iter_6.pt kept, the evaluation rows at iterations 3 and 6."""
    out = tmp_path / "epochs"
    assert train_det.main(_tiny(data_root, out, "solver.max_iter=6", "train.period_unit=epoch", "train.eval_period=1",
                                "train.keep_every=1", "train.checkpoint_period=1", "train.tensorboard=false")) == 0
    names = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "iter_3.pt", "iter_6.pt", "last.pt"], names
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "bbox_AP" in r] == [3, 6]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["period_unit"] == "epoch"
