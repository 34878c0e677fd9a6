"""tools/export_detector.py (issue 16): a whole detector exported to TorchScript gives the eager model's detections
(boxes, scores, labels, masks; float32, tolerance 1e-4 + relative 1e-5) on a real COCO image, loaded in a process
where resbackbones cannot be imported; user errors are one line with exit 2."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, REPO
from deploy_parity import SMALL_OVERRIDES
from resbackbones.config import dump_yaml, load_config
from resbackbones.config.det import DetTrainConfig
from resbackbones.data.folders import read_image
from resbackbones.deploy import load_detector
from resbackbones.detection.builder import build_detector
import export_detector  # noqa: E402

IMAGE = FIXTURES / "coco_sample" / "images" / "000000000089.jpg"
SMALL = SMALL_OVERRIDES
C4 = """_base_: {quickstart}
model:
  layout: c4
  backbone: {{out_features: [res4]}}
  box_head: {{type: res5}}
  anchors: {{sizes: [[32, 64, 128]]}}
  mask_head: {{enabled: false}}
"""
# Runs the exported file the way a deployment would: torch + torchvision, and no resbackbones importable.
DEPLOYMENT = """import sys
sys.modules["resbackbones"] = None
import torch, torchvision
model = torch.jit.load(sys.argv[1])
detections = model([torch.load(sys.argv[2])])[0]
torch.save({"detections": detections, "names": list(model.label_names)}, sys.argv[3])
"""


def _run_dir(tmp_path, kind):
    """A train_det-like run folder (config.yaml + last.pt with categories) holding a randomly initialised model."""
    run = tmp_path / kind
    run.mkdir()
    if kind == "mask_rcnn_fpn_bgr":
        cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml", [*SMALL, "model.input.format=BGR"])
    else:
        (run / "c4.yaml").write_text(C4.format(quickstart=REPO / "configs" / "quickstart.yaml"))
        cfg = load_config(DetTrainConfig, run / "c4.yaml", SMALL)
    dump_yaml(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    torch.save({"model": model.state_dict(), "label_to_category": {1: 11, 2: 12, 3: 13},
                "categories": [{"id": 11, "name": "square"}, {"id": 12, "name": "circle"},
                               {"id": 13, "name": "triangle"}]}, run / "last.pt")
    return run


@pytest.mark.parametrize("kind", ["mask_rcnn_fpn_bgr", "faster_rcnn_c4"])
def test_torchscript_export_equals_eager_without_resbackbones(kind, tmp_path, capsys):
    run = _run_dir(tmp_path, kind)
    out = tmp_path / "detector.pt"
    assert export_detector.main(["--checkpoint", str(run / "last.pt"), "--format", "torchscript",
                                 "--output", str(out), "--check", str(IMAGE)]) == 0
    assert "check on" in capsys.readouterr().out
    image = torch.from_numpy(read_image(IMAGE).transpose(2, 0, 1).copy()).float().div_(255)
    torch.save(image, tmp_path / "image.pt")
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", DEPLOYMENT, str(out), str(tmp_path / "image.pt"),
                             str(tmp_path / "got.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = torch.load(tmp_path / "got.pt", weights_only=True)
    assert got["names"] == ["__background__", "square", "circle", "triangle"]
    model = load_detector(run / "last.pt").model
    with torch.no_grad():
        expected = model([image])[0]
    detections = got["detections"]
    assert set(detections) == set(expected) == ({"boxes", "labels", "scores", "masks"} if "mask" in kind
                                                 else {"boxes", "labels", "scores"})
    assert len(expected["boxes"]) == 10 and torch.equal(detections["labels"], expected["labels"])
    for key in ("boxes", "scores", "masks"):
        if key in expected:
            assert torch.allclose(detections[key], expected[key], rtol=1e-5, atol=1e-4), key


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_onnx_without_the_onnx_package_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """The graph formats themselves (.pt2, dynamo ONNX) are checked against eager in test_deploy_formats.py."""
    run = _run_dir(tmp_path, "mask_rcnn_fpn_bgr")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on an install without the deploy extra
    assert export_detector.main(["--checkpoint", str(run / "last.pt"), "--format", "onnx",
                                 "--output", str(tmp_path / "det.onnx")]) == 2
    assert "pip install onnx" in _error(capsys) and not (tmp_path / "det.onnx").exists()


def test_user_errors_are_one_line(tmp_path, capsys):
    run = _run_dir(tmp_path, "mask_rcnn_fpn_bgr")
    last = run / "last.pt"
    before = last.read_bytes()
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "a.pt")], "not found"),
        (["--checkpoint", str(tmp_path / "missing.pt"), "--config", str(run / "config.yaml"),
          "--output", str(tmp_path / "a.pt")], "not found"),
        (["--checkpoint", str(last), "--output", str(last)], "destroy the input"),
        (["--checkpoint", str(last), "--output", str(run / "config.yaml")], "exists"),
        (["--checkpoint", str(last), "--output", str(tmp_path / "a.pt"), "model.num_classes=5"], "does not match"),
        (["--checkpoint", str(last), "--output", str(tmp_path / "a.pt"), "--check", str(tmp_path / "no.jpg")],
         "no.jpg"),
    ]
    for args, expected in cases:
        assert export_detector.main(args) == 2, args
        assert expected in _error(capsys), args
    assert last.read_bytes() == before and not (tmp_path / "a.pt").exists()
