"""Issue 22 item 3: `tools/export_detector.py --quantize int8 --calib DIR_OR_JSON` writes an ONNX file whose backbone
+ FPN convolutions are int8 (onnxruntime static quantization, QDQ) and whose heads stay float32; it loads through
resbackbones.deploy.load like the float32 file (same label names and metadata), takes any image size, and its FPN
features stay close to the float32 file's. Bad inputs: one line on stderr, exit 2, nothing written.

One export (small random Faster R-CNN, ~35 s on one thread) for the module: the tool writes the int8 file, and the
float32 file it quantized is kept beside it by a spy on quantize_onnx. Random weights make the detections near-ties
(scores ~ 1 / classes), so the closeness is checked where int8 acts: the FPN levels the RPN reads."""
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest

from conftest import FIXTURES, random_detector_run
from resbackbones.deploy import load, quantize
from deploy_parity import SIZES, real_crops as _images
import export_detector as tool  # noqa: E402

COCO_JSON = FIXTURES / "coco_sample" / "annotations.json"  # images in coco_sample/images/
SMALL = ["model.input.min_size=[160]", "model.input.max_size=200", "model.rpn.pre_nms_top_n_test=100",
         "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0",
         "model.roi_heads.detections_per_img=10", "model.mask_head.enabled=false"]
# Measured on this setup (random weights, BatchNorm at its initial statistics, 4 calibration images, MinMax,
# per-channel int8 weights): relative L2 error of the FPN levels 11-16 %, cosine 0.987-0.994 at the three sizes
# (the trained BCCD R50-GN model: docs/dev/deploy_plan.md, "int8"); a wrong scale or a lost QDQ pair is far outside.
FEATURE_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8_run")
    return random_detector_run(folder, SMALL)


@pytest.fixture(scope="module")
def files(run_dir, tmp_path_factory):
    """(fp32 .onnx, int8 .onnx): the int8 one written by the tool, the fp32 one it quantized."""
    root = tmp_path_factory.mktemp("int8")
    fp32, int8 = root / "fp32.onnx", root / "int8.onnx"
    real = quantize.quantize_onnx

    def keep_fp32(source, path, calib, **options):
        shutil.copyfile(source, fp32)
        return real(source, path, calib, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize, "quantize_onnx", keep_fp32)
        assert tool.main(["--checkpoint", str(run_dir / "last.pt"), "--quantize", "int8", "--calib",
                          str(COCO_JSON), "--calib-images", "4", "--output", str(int8)]) == 0
    return fp32, int8


def test_int8_file_quantizes_backbone_and_fpn_only(files):
    fp32, int8 = files
    backbone = quantize.backbone_convs(onnx.load(str(fp32)))
    total = sum(1 for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    assert len(backbone) > 10 and total > len(backbone)  # the RPN head's convolutions are not the backbone's
    assert quantize.quantized_convs(int8) == len(backbone)
    assert quantize.quantized_convs(fp32) == 0
    assert quantize.describe_quantized(int8) == f"int8: {len(backbone)} of {total} convolutions"
    a, b = load(fp32), load(int8)
    assert b.label_names == a.label_names == ["__background__", "a", "b", "c"]
    assert b.metadata == a.metadata and b.metadata["label_to_category"] == {"1": 1, "2": 2, "3": 3}
    assert b.outputs == a.outputs == ["boxes", "labels", "scores"]


def _with_fpn_outputs(path) -> onnxruntime.InferenceSession:
    """A session on `path` that also outputs the FPN levels (the inputs of the RPN head's first convolution)."""
    model = onnx.load(str(path))
    levels = [n.input[0] for n in model.graph.node if n.op_type == "Conv" and n.input[1].startswith("rpn_head.conv")]
    assert len(levels) == 4, levels  # P2-P4 + the max-pool P5 of the quickstart FPN
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in levels)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_int8_fpn_features_close_to_fp32_at_three_sizes(files):
    sessions = [_with_fpn_outputs(path) for path in files]
    for image in _images():
        # by size, P2 first: the two graphs list the levels in their own node order
        fp32, int8 = (sorted(s.run(None, {"image": image.numpy()})[-4:], key=lambda o: -o.size) for s in sessions)
        for level, (a, b) in enumerate(zip(fp32, int8)):
            assert a.shape == b.shape and a.shape[-2] > 1, (image.shape, level)
            error = np.linalg.norm(a - b) / np.linalg.norm(a)
            cosine = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert error < FEATURE_TOLERANCE and cosine > 0.98, (tuple(image.shape), level, error, cosine)


def test_int8_file_runs_through_load_at_three_sizes(files):
    fp32, int8 = (load(path) for path in files)
    images = _images()
    expected, got = fp32(images), int8(images)
    for (h, w), e, g in zip(SIZES, expected, got):
        assert set(g) == {"boxes", "labels", "scores"} and len(g["boxes"]) == len(e["boxes"]) == 10
        assert g["boxes"].shape == (10, 4) and bool((g["boxes"] >= 0).all())
        assert bool((g["boxes"][:, 2] <= w).all()) and bool((g["boxes"][:, 3] <= h).all())
        assert set(g["labels"].tolist()) <= {1, 2, 3}
        # near-tied random-weight scores (so boxes and labels may swap places): int8 moves the sorted scores by
        # 1.3 % of their value at most (measured), a broken quantization by their whole spread
        assert float((g["scores"] - e["scores"]).abs().max()) <= 0.03 * float(e["scores"].max()), (h, w)


def test_quantize_refusals_name_the_input_and_write_nothing(run_dir, tmp_path, capsys):
    empty, bad = tmp_path / "empty", tmp_path / "bad"
    empty.mkdir()
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image")
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"old")
    out = tmp_path / "det.onnx"
    cases = [
        (["--quantize", "int8", "--output", str(out)], "--calib"),
        (["--quantize", "int8", "--calib", str(empty), "--output", str(out)], str(empty)),
        (["--quantize", "int8", "--calib", str(tmp_path / "missing"), "--output", str(out)], "missing"),
        (["--quantize", "int8", "--calib", str(bad), "--output", str(out)], "broken.jpg"),
        (["--quantize", "int8", "--calib", str(COCO_JSON), "--calib-images", "0", "--output", str(out)],
         "--calib-images"),
        (["--quantize", "int8", "--format", "torchscript", "--calib", str(COCO_JSON), "--output",
          str(tmp_path / "det.pt")], "--format torchscript"),
        (["--calib", str(COCO_JSON), "--format", "onnx", "--output", str(out)], "--quantize"),
        (["--quantize", "int8", "--calib", str(COCO_JSON), "--output", str(existing)], "exists"),
    ]
    for args, expected in cases:
        assert tool.main(["--checkpoint", str(run_dir / "last.pt"), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (args, err)
    assert not out.exists() and not (tmp_path / "det.pt").exists() and existing.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty", "existing.onnx"]
