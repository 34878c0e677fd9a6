"""Bad inputs of issue 16 that still reached the user as a Python traceback (audit against the issue's list):
an output path under a file or a file output that is a folder (every tool that writes), a resume with another
optimizer, optimize_for_inference on a detector, and ground truth without any annotation (the fast COCOeval
backend's IndexError). Each is one line naming the thing, exit 2, nothing written - or, for the empty ground truth,
pycocotools' answer (every stat -1)."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import REPO
from resbackbones.engine.checkpoint import CheckpointError, load_optimizer_state
import convert_weights  # noqa: E402
import eval_coco  # noqa: E402
import export_detector  # noqa: E402
import predict  # noqa: E402
import train_cls  # noqa: E402
import train_det  # noqa: E402

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
GT = REPO / "tests" / "fixtures" / "coco_sample" / "annotations.json"
CLS = ["solver.max_iter=2", "solver.batch_size=4", "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
       "data.num_workers=0", "train.progress=false", "train.tensorboard=false", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RESBACKBONES_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# (tool, argv given tmp_path t with t/afile (a file), t/adir (a folder), t/r18.pth, t/dt.json; words in the error)
UNWRITABLE = [
    ("convert_weights", lambda t: ["--from", "torchvision", str(t / "r18.pth"), str(t / "adir")], "is a folder"),
    ("convert_weights", lambda t: ["--from", "torchvision", str(t / "r18.pth"), str(t / "afile" / "o.safetensors")],
     "afile is a file, not a folder"),
    ("eval_coco", lambda t: ["--gt", str(GT), "--dt", str(t / "dt.json"), "--out", str(t / "adir")], "is a folder"),
    ("eval_coco", lambda t: ["--gt", str(GT), "--dt", str(t / "dt.json"), "--out", str(t / "adir"), "--overwrite"],
     "is a folder"),
    ("eval_coco", lambda t: ["--gt", str(GT), "--dt", str(t / "dt.json"), "--out", str(t / "afile" / "s.json")],
     "afile is a file, not a folder"),
    ("export_detector", lambda t: ["--checkpoint", str(t / "last.pt"), "--config", QUICKSTART, "--output",
                                   str(t / "afile" / "m.pt")], "afile is a file, not a folder"),
    ("export_detector", lambda t: ["--checkpoint", str(t / "last.pt"), "--config", QUICKSTART, "--output",
                                   str(t / "adir")], "is a folder"),
    ("predict", lambda t: ["--checkpoint", str(t / "last.pt"), "--config", QUICKSTART, "--images", str(t / "x.png"),
                           "--output", str(t / "afile" / "o")], "afile is a file, not a folder"),
    ("train_cls", lambda t: ["--output", str(t / "afile" / "run"), *CLS], "afile is a file, not a folder"),
    ("train_cls", lambda t: ["--output", str(t / "run"), "--export", str(t / "afile" / "bb.safetensors"), *CLS],
     "afile is a file, not a folder"),
    ("train_det", lambda t: ["--config", QUICKSTART, "--output", str(t / "afile" / "run"), "--device", "cpu"],
     "afile is a file, not a folder"),
    # a folder that takes no new files (/proc, whoever runs the test): FileNotFoundError / SafetensorError before
    ("eval_coco", lambda t: ["--gt", str(GT), "--dt", str(t / "dt.json"), "--out", "/proc/s.json"],
     "no file can be made in /proc"),
    ("predict", lambda t: ["--checkpoint", str(t / "last.pt"), "--config", QUICKSTART, "--images", str(t / "x.png"),
                           "--output", "/proc/pred"], "no file can be made in /proc"),
    ("export_detector", lambda t: ["--checkpoint", str(t / "last.pt"), "--config", QUICKSTART, "--output",
                                   "/proc/m.pt"], "no file can be made in /proc"),
    ("train_cls", lambda t: ["--output", "/proc/run", *CLS], "no file can be made in /proc"),
    ("train_det", lambda t: ["--config", QUICKSTART, "--output", "/proc/run", "--device", "cpu"],
     "no file can be made in /proc"),
    ("train_cls", lambda t: ["--output", str(t / "afile"), *CLS], "afile is a file"),
    ("train_det", lambda t: ["--config", QUICKSTART, "--output", str(t / "afile"), "--device", "cpu"],
     "afile is a file"),
]


@pytest.mark.parametrize("tool,argv,words", UNWRITABLE)
def test_an_output_that_cannot_be_written_is_one_line(tool, argv, words, tmp_path, capsys):
    """Was NotADirectoryError / FileExistsError / IsADirectoryError tracebacks (or, with --overwrite, a write into
    a folder); now refused before any work, naming the flag and the file in the way."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(GT.read_text())["annotations"][:5]]
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    before = _snapshot(tmp_path)
    assert {"convert_weights": convert_weights, "eval_coco": eval_coco, "export_detector": export_detector,
            "predict": predict, "train_cls": train_cls, "train_det": train_det}[tool].main(argv(tmp_path)) == 2
    assert words in _error(capsys)
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == \
        ["adir", "afile", "dt.json", "r18.pth"] and not any((tmp_path / "adir").iterdir())


def test_resume_with_another_optimizer_or_head_is_one_line(tmp_path, capsys):
    """train_cls --resume with solver.optimizer=adamw over an SGD run was a KeyError('step') traceback inside
    torch's Adam.__setstate__; a changed head was already one line (kept here as a regression check)."""
    out = tmp_path / "run"
    assert train_cls.main(["--output", str(out), *CLS]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert train_cls.main(["--output", str(out), *CLS, "solver.max_iter=4", "solver.optimizer=adamw", "--resume"]) == 2
    err = _error(capsys)
    assert "another optimizer (sgd)" in err and "solver.optimizer=sgd" in err and "last.pt" in err
    assert train_cls.main(["--output", str(out), *CLS, "solver.max_iter=4", "model.num_classes=5", "--resume"]) == 2
    assert "head.fc.weight" in _error(capsys)
    assert {k: v for k, v in _snapshot(out).items() if k.name != ".lock"} == \
        {k: v for k, v in before.items() if k.name != ".lock"}
    assert train_cls.main(["--output", str(out), *CLS, "solver.max_iter=4", "--resume"]) == 0  # the same optimizer
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["global_iter"] == 4


def test_load_optimizer_state_rules(tmp_path):
    """The check both trainers use on resume (train_det's as well): same optimizer loads; another optimizer or
    other parameter groups are a CheckpointError naming the checkpoint."""
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad, params[1].grad = torch.ones(2), torch.ones(3)
    sgd.step()
    state = {"optimizer": sgd.state_dict(), "config": {"solver": {"optimizer": "sgd"}}}
    fresh = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    load_optimizer_state(fresh, state, checkpoint="c.pt")
    assert torch.equal(fresh.state[params[0]]["momentum_buffer"], sgd.state[params[0]]["momentum_buffer"])
    with pytest.raises(CheckpointError, match=r"c.pt holds the state of another optimizer \(sgd\) than this run's "
                                              r"AdamW.*solver.optimizer=sgd"):
        load_optimizer_state(torch.optim.AdamW(params, lr=0.1), state, checkpoint="c.pt")
    with pytest.raises(CheckpointError, match="c.pt: its optimizer state does not fit"):
        load_optimizer_state(torch.optim.SGD(params[:1], lr=0.1, momentum=0.9), state, checkpoint="c.pt")
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_optimizer_state(fresh, {"model": {}}, checkpoint="c.pt")


def test_optimize_for_inference_refuses_a_detector():
    """Was accepted, then an AttributeError ('list' object has no attribute 'dtype') at the first call."""
    import resbackbones as rb
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector

    detector = build_detector(load_config(DetTrainConfig, QUICKSTART, ["model.backbone.norm=BN"]).model)
    with pytest.raises(TypeError, match=r"not a detector \(MaskRCNN\).*export_detector") as info:
        rb.optimize_for_inference(detector)
    assert "\n" not in str(info.value)
    fast = rb.optimize_for_inference(rb.build_classifier("resnet18", num_classes=3).eval(), dtype=torch.float32)
    with pytest.raises(TypeError, match="one batch tensor"):
        fast([torch.rand(3, 32, 32)])


def test_ground_truth_without_annotations_scores_like_pycocotools(tmp_path, capsys):
    """The fast backend died with an IndexError in its matching on a json without any annotation; pycocotools
    answers -1 (undefined) for every stat. Now both agree, and eval_coco exits 0."""
    from resbackbones.evaluation.coco import _run

    gt = json.loads(GT.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
            for a in gt["annotations"][:10]]
    gt["annotations"] = []
    fast = _run(gt, copy.deepcopy(dets), "bbox", "fast")
    reference = _run(gt, copy.deepcopy(dets), "bbox", "pycocotools")
    assert list(fast.stats) == list(reference.stats) == [-1.0] * 12
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    assert eval_coco.main(["--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_train_det_resume_with_another_optimizer_is_one_line(tmp_path, capsys):
    """The quickstart trains with AdamW; resuming it with solver.optimizer=sgd was torch's error deep in
    load_state_dict. Its checkpoint records no config: the message names the checkpoint and both settings."""
    out = tmp_path / "run"
    common = ["--config", QUICKSTART, "--output", str(out), "--device", "cpu", "data.train.num_images=2",
              f"data.train.root={tmp_path / 'train'}", "data.val.num_images=1", f"data.val.root={tmp_path / 'val'}",
              "solver.batch_size=2", "train.progress=false"]
    assert train_det.main([*common, "solver.max_iter=1"]) == 0
    capsys.readouterr()
    last = (out / "checkpoints" / "last.pt").read_bytes()
    assert train_det.main([*common, "solver.max_iter=2", "solver.optimizer=sgd", "--resume"]) == 2
    err = _error(capsys)
    assert "last.pt holds the state of another optimizer (adamw) than this run's SGD" in err and "betas" in err
    assert "resume with solver.optimizer=adamw" in err  # the checkpoint records its config
    assert train_det.main([*common, "solver.max_iter=2", "model.fpn.out_channels=32", "--resume"]) == 2  # a changed
    assert "of another shape" in _error(capsys)  # model (FPN width, head): one line through --resume too
    assert (out / "checkpoints" / "last.pt").read_bytes() == last


@pytest.mark.parametrize("tool,argv", [
    ("train_cls", lambda t: ["--output", str(t / "run"), "--resume", str(t / "notes.txt"), *CLS]),
    ("predict", lambda t: ["--checkpoint", str(t / "notes.txt"), "--config", QUICKSTART, "--images", str(GT.parent /
                           "images"), "--output", str(t / "o"), "--device", "cpu"]),
    ("convert_weights", lambda t: ["--from", "torchvision", str(t / "notes.txt"), str(t / "o.safetensors")]),
])
def test_a_text_file_as_a_checkpoint_is_not_called_pickled_code(tool, argv, tmp_path, capsys):
    """A text file given as a checkpoint / weights was reported as "carries pickled objects … could run code";
    it holds no pickle at all: `cannot read … it is neither a torch zip file nor a pickle`."""
    (tmp_path / "notes.txt").write_text("x = 1\n")
    module = {"train_cls": train_cls, "predict": predict, "convert_weights": convert_weights}[tool]
    assert module.main(argv(tmp_path)) == 2
    err = _error(capsys)
    assert "notes.txt" in err and "neither a torch zip file nor a pickle" in err and "run code" not in err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_training_is_exit_130_and_frees_the_folder(tmp_path, capsys, monkeypatch):
    """Ctrl-C anywhere in train_cls / train_det: one line with the resume hint, exit 130, and the run folder's lock
    released (a second main() in the same process is not refused as 'in use by a running job')."""
    from resbackbones.engine.cls_trainer import ClsTrainer
    from resbackbones.engine.det_trainer import DetTrainer

    out = tmp_path / "cls"
    monkeypatch.setattr(ClsTrainer, "fit", _interrupt)
    assert train_cls.main(["--output", str(out), *CLS]) == 130
    assert "resume with --resume" in _error(capsys)
    monkeypatch.setattr(ClsTrainer, "fit", _interrupt)
    assert train_cls.main(["--output", str(out), *CLS, "--resume"]) == 130  # not "in use by a running job"
    assert "resume with --resume" in _error(capsys)
    monkeypatch.setattr(DetTrainer, "fit", _interrupt)
    det = ["--config", QUICKSTART, "--output", str(tmp_path / "det"), "--device", "cpu", "data.train.num_images=2",
           f"data.train.root={tmp_path / 'train'}", "data.val.num_images=1", f"data.val.root={tmp_path / 'val'}",
           "solver.batch_size=2", "train.progress=false"]
    assert train_det.main(det) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert train_det.main([*det, "--resume"]) == 130
    assert "continue with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,named", [
    (["data.train.ann_file=/data/train.json", "data.train.image_root=/data/images"], "data.train.ann_file"),
    (["data.val.image_root=/data/images"], "data.val.image_root"),
])
def test_coco_paths_on_a_synthetic_split_are_refused(overrides, named, tmp_path, capsys):
    """SILENT-WRONG found by the audit: the quickstart's splits are kind 'shapes'; a data.train.ann_file override
    without data.train.kind=coco was ignored and the run trained (exit 0) on the synthetic set. Now refused before
    the output folder is made, naming the key and the fix."""
    from resbackbones.config import ConfigError, load_config
    from resbackbones.config.det import DetTrainConfig

    with pytest.raises(ConfigError, match=f"{named} is set but .* is 'shapes'.*kind=coco"):
        load_config(DetTrainConfig, QUICKSTART, overrides)
    load_config(DetTrainConfig, QUICKSTART, [*overrides, f"data.{named.split('.')[1]}.kind=coco"])  # the fix loads
    assert train_det.main(["--config", QUICKSTART, "--output", str(tmp_path / "run"), *overrides]) == 2
    assert "kind=coco" in _error(capsys) and not (tmp_path / "run").exists()


def test_eval_coco_checkpoint_with_missing_or_corrupt_images_is_one_line(tmp_path, capsys):
    """eval_coco --checkpoint on a json naming an image the folder lacks died mid-run with a DataError traceback;
    now refused before the model runs (missing) or named in one line (corrupt)."""
    from resbackbones.config import dump_yaml, load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector

    cfg = load_config(DetTrainConfig, QUICKSTART, ["model.input.min_size=[128]", "model.input.max_size=160",
                                                   "model.num_classes=80"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    torch.save({"model": build_detector(cfg.model).state_dict()}, tmp_path / "last.pt")
    gt = json.loads(GT.read_text())
    image = gt["images"][0]
    gt["images"] = [image]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "images").mkdir()
    common = ["--gt", str(tmp_path / "gt.json"), "--checkpoint", str(tmp_path / "last.pt"), "--config",
              str(tmp_path / "config.yaml"), "--images", str(tmp_path / "images"), "--device", "cpu",
              "--out", str(tmp_path / "s.json")]
    assert eval_coco.main(common) == 2
    err = _error(capsys)
    assert f"1 image(s) of {tmp_path / 'gt.json'} are not in --images" in err and image["file_name"] in err
    (tmp_path / "images" / image["file_name"]).write_bytes(b"not a jpeg")
    assert eval_coco.main(common) == 2
    assert image["file_name"] in _error(capsys) and not (tmp_path / "s.json").exists()


def test_convert_weights_into_a_folder_it_cannot_write_is_one_line(tmp_path, capsys):
    """/proc takes no new files (whoever runs the test, root included): was a SafetensorError traceback."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    assert convert_weights.main(["--from", "torchvision", str(tmp_path / "r18.pth"), "/proc/r18.safetensors"]) == 2
    assert "/proc/r18.safetensors cannot be written: no file can be made in /proc" in _error(capsys)
