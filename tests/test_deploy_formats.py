"""Issue 22: one exported file per format (TorchScript .pt, torch.export .pt2, dynamo ONNX .onnx) of a small
Mask R-CNN, loaded with resbackbones.deploy.load, gives the eager float32 model's detections at three image sizes
(same labels, boxes within 1e-3 of the image size, scores within 1e-3, mask IoU >= 0.99); wrong inputs are refused
in one ValueError naming the image; the tool follows the output rule (no silent overwrite, inputs never replaced).

The .pt2 and .onnx files are written once per test session (module fixture) from one torch.export capture: the
capture and the ONNX conversion are the slow part (~2 minutes on 2 shared cores; deserialising the .pt2 ~20 s)."""
import pytest
import torch

from deploy_parity import assert_matches_eager, real_crops
from resbackbones.deploy import load, load_detector
from resbackbones.deploy.export import export_detector, write_exported
from test_export_detector import _run_dir
import export_detector as tool  # noqa: E402

FORMATS = {"torchscript": "det.pt", "export": "det.pt2", "onnx": "det.onnx"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager model, {format: file}) for a small random Mask R-CNN (quickstart with few proposals)."""
    root = tmp_path_factory.mktemp("deploy")
    run = _run_dir(root, "mask_rcnn_fpn_bgr")
    loaded = load_detector(run / "last.pt")
    files = {fmt: root / name for fmt, name in FORMATS.items()}
    assert tool.main(["--checkpoint", str(run / "last.pt"), "--format", "torchscript",
                      "--output", str(files["torchscript"])]) == 0
    write_exported(loaded.model, {"export": files["export"], "onnx": files["onnx"]}, label_names=loaded.names_list())
    return loaded.model.eval(), files, run


_LOADED = {}


def _load(files, fmt):
    """load() once per file (a .pt2 takes seconds to deserialise)."""
    if files[fmt] not in _LOADED:
        _LOADED[files[fmt]] = load(files[fmt])
    return _LOADED[files[fmt]]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_file_matches_eager_at_three_sizes(exported, fmt):
    model, files, _ = exported
    detector = _load(files, fmt)
    assert detector.label_names == ["__background__", "square", "circle", "triangle"]
    assert_matches_eager(detector, model, real_crops(), fmt)


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_torch_formats_give_the_eager_detections_bit_for_bit(exported, fmt):
    """.pt and .pt2 run the eager model's ops on a batch in its memory layout (NHWC here: channels_last is the
    detector default), so they round as it does: equal boxes, labels and scores, not only close ones (an NCHW
    graph flipped 4 pixels of a 34-pixel DSB2018 nucleus at the 0.5 threshold: mask IoU 0.88). Masks: equal in
    .pt; the .pt2 graph's own mask paste within 1e-5 of torchvision's, the same pixels above 0.5."""
    model, files, _ = exported
    assert model.transform.channels_last
    images = real_crops()
    with torch.no_grad():
        expected = [model([image])[0] for image in images]
    for image, e, g in zip(images, expected, _load(files, fmt)(images)):
        where = (fmt, tuple(image.shape))
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(g[key], e[key]), (*where, key)
        if fmt == "torchscript":
            assert torch.equal(g["masks"], e["masks"]), where
        else:  # the graph pastes masks with its own (exportable) resampling: measured within 4e-6 of torchvision's
            assert (g["masks"] - e["masks"]).abs().max() <= 1e-5, where
            assert torch.equal(g["masks"] > 0.5, e["masks"] > 0.5), where


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_wrong_inputs_are_refused_in_one_line(exported, fmt):
    detector = _load(exported[1], fmt)
    good = torch.rand(3, 64, 80)
    cases = [([], "empty list"), ([good, (good * 255).to(torch.uint8)], "image 1: "),
             ([good.permute(1, 2, 0).contiguous()], "image 0: "), ([torch.rand(4, 64, 80)], "image 0: "),
             (good, "got float32 [3, 64, 80]")]
    for images, expected in cases:
        with pytest.raises(ValueError) as error:
            detector(images)
        message = str(error.value)
        assert expected in message and "\n" not in message, (fmt, message)
        if expected.startswith("image"):
            assert "[3, H, W]" in message and "got " in message
    assert "uint8 [3, 64, 80]" in _refusal(detector, [(good * 255).to(torch.uint8)])
    assert "channels last" in _refusal(detector, [good.permute(1, 2, 0).contiguous()])
    assert "RGBA" in _refusal(detector, [torch.rand(4, 64, 80)])


def _refusal(detector, images) -> str:
    with pytest.raises(ValueError) as error:
        detector(images)
    return str(error.value)


def test_torchscript_file_refuses_wrong_inputs_itself(exported):
    """Without the loader, the TorchScript file raises the same refusal (inside torch.jit's error)."""
    with pytest.warns(FutureWarning):  # torch.jit's deprecation
        module = torch.jit.load(str(exported[1]["torchscript"]))
    for images in ([], [torch.rand(4, 64, 80)], [torch.zeros(3, 64, 80, dtype=torch.uint8)]):
        with pytest.raises(Exception) as error:
            module(images)
        assert "expected" in str(error.value) and "[3, H, W]" in str(error.value)


def test_export_tool_output_rule(exported, tmp_path, capsys):
    """No silent overwrite, the output never replaces an input, the suffix matches the format; the files are
    written through io.outputs (test_structure checks no module writes files directly)."""
    _, files, run = exported
    last = run / "last.pt"
    before = files["export"].read_bytes()
    for args, expected in [
        (["--format", "export", "--output", str(files["export"])], "exists"),
        (["--format", "torchscript", "--output", str(last), "--overwrite"], "destroy the input"),
        (["--format", "export", "--output", str(tmp_path / "det.pt")], "must end in .pt2"),
        (["--format", "onnx", "--output", str(tmp_path / "det.pt2")], "must end in .onnx"),
    ]:
        assert tool.main(["--checkpoint", str(last), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (args, err)
    assert files["export"].read_bytes() == before
    assert not (tmp_path / "det.pt").exists() and not (tmp_path / "det.pt2").exists()


def test_load_refuses_files_that_are_not_exported_detectors(exported, tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        load(exported[2] / "config.yaml")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt2")


def test_onnx_runs_on_as_many_threads_as_torch(exported, monkeypatch):
    """onnxruntime's default is every core whatever torch was told; load() gives its session torch's thread count
    (or num_threads), so OMP_NUM_THREADS / torch.set_num_threads decide for every format alike."""
    import onnxruntime
    seen, real = [], onnxruntime.InferenceSession

    def spy(path, options, providers):
        seen.append(options.intra_op_num_threads)
        return real(path, options, providers=providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    load(exported[1]["onnx"])
    load(exported[1]["onnx"], num_threads=1)
    assert seen == [torch.get_num_threads(), 1]
