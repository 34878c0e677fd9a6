"""Untrusted files through every command-line tool: a checkpoint that carries pickled code is refused with one
line and exit 2 and nothing is executed (the payload would create a marker file); weights of the wrong shape
name the layer and both shapes. tests/test_weights_convert.py and test_engine_checkpoint.py cover the library
calls (rb.weights.load, load_checkpoint); this file covers the paths users actually take: --weights, --resume
(explicit and the automatic OUTPUT/checkpoints/last.pt), --checkpoint, --eval-only, and a pickle disguised with
a .safetensors name.
"""
import importlib.util
import os
import pickle

import pytest
import torch

import resbackbones as rb
from conftest import REPO

TINY_CLS = ["model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}", "--batch-size", "4",
            "--epochs", "1", "--device", "cpu", "--workers", "0", "train.progress=false", "train.tensorboard=false"]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
FIXTURE_IMAGE = REPO / "tests" / "fixtures" / "coco_sample" / "images" / "000000000089.jpg"


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"reliability_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = {name: _tool(name) for name in ("train_cls", "train_det", "eval_coco", "predict", "convert_weights")}


class Exploit:
    """Unpickling this runs `touch marker` (what a malicious checkpoint would do with worse commands)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path):
    """(marker path, {kind: file}) with the payload in a torch zip file, a plain pickle and a fake safetensors."""
    marker = tmp_path / "pwned"
    files = {"pt": tmp_path / "evil.pt", "pkl": tmp_path / "evil.pkl", "fake_safetensors": tmp_path / "evil.safetensors"}
    payload = {"model": {"w": torch.ones(1)}, "state_dict": {"w": torch.ones(1)}, "x": Exploit(marker)}
    torch.save(payload, files["pt"])
    with open(files["pkl"], "wb") as handle:
        pickle.dump({"model": {"conv1_w": Exploit(marker)}}, handle, protocol=2)
    files["fake_safetensors"].write_bytes(files["pt"].read_bytes())
    return marker, files


def _run(capsys, tool, argv):
    code = TOOLS[tool].main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _cases(tmp_path, files):
    gt = REPO.parent / "shared" / "data" / "coco_sample" / "annotations.json"
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "one.jpg").write_bytes(FIXTURE_IMAGE.read_bytes())  # predict checks its inputs before the checkpoint
    out = tmp_path / "out"
    return [
        ("train_cls", ["--output", out, "--eval-only", "--weights", files["pt"], *TINY_CLS]),
        ("train_cls", ["--output", out, "--weights", files["fake_safetensors"], *TINY_CLS]),
        ("train_cls", ["--output", out, *TINY_CLS, "--resume", files["pt"]]),
        ("train_det", ["--config", QUICKSTART, "--output", out, "--device", "cpu", "--weights", files["pt"],
                       "data.train.num_images=2", f"data.train.root={tmp_path / 'shapes'}"]),
        ("train_det", ["--config", QUICKSTART, "--output", out, "--device", "cpu", "--eval-only",
                       "--weights", files["pt"], "data.val.num_images=2", f"data.val.root={tmp_path / 'shapes'}"]),
        ("eval_coco", ["--gt", gt, "--checkpoint", files["pt"], "--config", QUICKSTART, "--images", images,
                       "--device", "cpu"]),
        ("predict", ["--checkpoint", files["pt"], "--config", QUICKSTART, "--images", images, "--output", out]),
        ("convert_weights", ["--source", "torchvision", files["pt"], tmp_path / "x.safetensors"]),
        ("convert_weights", ["--source", "detectron2", files["pkl"], tmp_path / "y.safetensors"]),
    ]


@pytest.mark.parametrize("case", range(9))
def test_pickled_code_is_refused_by_every_tool(case, evil, tmp_path, capsys):
    marker, files = evil
    tool, argv = _cases(tmp_path, files)[case]
    code, lines = _run(capsys, tool, argv)
    assert not marker.exists(), f"{tool} executed the pickled payload"
    assert code == 2, (tool, code, lines)
    assert len(lines) == 1 and "error: " in lines[0], lines
    assert "refus" in lines[0] and "evil" in lines[0], lines[0]


def test_planted_last_checkpoint_is_refused_on_automatic_resume(evil, tmp_path, capsys):
    marker, files = evil
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(files["pt"].read_bytes())
    code, lines = _run(capsys, "train_cls", ["--output", out, *TINY_CLS, "--resume"])
    assert not marker.exists()
    assert code == 2 and len(lines) == 1 and "refus" in lines[0] and "last.pt" in lines[0], lines


def test_shape_mismatch_through_train_cls_weights_names_layer_and_shapes(tmp_path, capsys):
    narrow = rb.build_classifier("cifar_resnet", depth=8, widths=[4, 8, 8], num_classes=10)
    path = rb.weights.save(narrow, tmp_path / "narrow.safetensors")
    wide = ["model.backbone.options={depth: 8, widths: [4, 8, 16]}"]
    code, lines = _run(capsys, "train_cls", ["--output", tmp_path / "out", "--eval-only", "--weights", path,
                                             *TINY_CLS, *wide])
    assert code == 2 and len(lines) == 1, lines
    # A stage-3 conv: 16 output channels in the model, 8 in the file.
    assert "narrow.safetensors" in lines[0] and "(16, 8, 3, 3)" in lines[0] and "(8, 8, 3, 3)" in lines[0], lines[0]
    assert "res4" in lines[0] or "stage" in lines[0] or "layer" in lines[0], lines[0]


def test_shape_mismatch_through_train_det_weights_names_layer_and_shapes(tmp_path, capsys):
    backbone = rb.build_backbone("resnet18")
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    key = next(k for k in state if k.endswith("conv1.weight"))  # the stem conv [64, 3, 7, 7]
    state[key] = torch.zeros(64, 3, 3, 3)
    path = rb.weights.save(state, tmp_path / "bad_stem.safetensors")
    code, lines = _run(capsys, "train_det", ["--config", QUICKSTART, "--output", tmp_path / "out", "--device", "cpu",
                                             "--weights", path, "data.train.num_images=2",
                                             f"data.train.root={tmp_path / 'shapes'}", "solver.max_iter=1"])
    assert code == 2 and len(lines) == 1, lines
    assert "bad_stem.safetensors" in lines[0] and key.split(".")[-2] in lines[0], lines[0]
    assert "(64, 3, 7, 7)" in lines[0] and "(64, 3, 3, 3)" in lines[0], lines[0]
