"""tools/predict.py (issue 16): batches give the detections of one-by-one inference, --gt draws a COCO json's ground
truth beside the predictions, and an image the model cannot resize (a 10000x50 strip) is refused in one line naming
it and its size instead of failing inside interpolate."""

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO, random_detector_run
from resbackbones.deploy import load_detector
from resbackbones.deploy.predict import padded_shape, predict_images
from resbackbones.visualize import GT_COLOUR
import predict  # noqa: E402

IMAGES = FIXTURES / "coco_sample" / "images"
GT = FIXTURES / "coco_sample" / "annotations.json"
SMALL = ["model.input.min_size=[128]", "model.input.max_size=160", "model.rpn.pre_nms_top_n_test=100",
         "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_img=8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A train_det-like run folder holding a randomly initialised quickstart Mask R-CNN (scores ~ 1 / classes)."""
    return random_detector_run(tmp_path_factory.mktemp("run"), SMALL)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_batches_give_one_by_one_detections(run):
    model = load_detector(run / "last.pt").model
    paths = sorted(IMAGES.iterdir()) * 2  # 12 images, several of one resized shape
    shapes = [padded_shape(model.transform, *cv2.imread(str(p)).shape[:2]) for p in paths]
    assert max(shapes.count(s) for s in shapes) >= 4  # batches of 4 do form
    for path, shape in zip(paths[:6], shapes):  # the shape predicted is the one the transform really gives
        image = torch.from_numpy(cv2.imread(str(path))[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
        assert tuple(model.transform([image])[0].tensors.shape[-2:]) == shape
    single = list(predict_images(model, paths, batch_size=1, device=torch.device("cpu")))
    batched = list(predict_images(model, paths, batch_size=4, device=torch.device("cpu")))
    assert sorted(str(p) for p, _, _ in batched) == sorted(str(p) for p, _, _ in single)
    by_path = {}
    for path, _, output in single:
        by_path.setdefault(str(path), []).append(output)
    for path, _, output in batched:
        expected = by_path[str(path)][0]
        assert len(output["scores"]) == 8 and torch.equal(output["labels"], expected["labels"])
        for key in ("boxes", "scores", "masks"):
            assert torch.allclose(output[key], expected[key], rtol=1e-5, atol=1e-5), (path, key)


def test_tool_batch_sizes_write_the_same_pngs(run, tmp_path):
    for size in ("1", "4"):
        assert predict.main(["--checkpoint", str(run / "last.pt"), "--images", str(IMAGES), "--output",
                             str(tmp_path / size), "--batch-size", size, "--score-thresh", "0.2", "--amp", "none",
                             "--device", "cpu"]) == 0
    one = {p.name: cv2.imread(str(p)) for p in (tmp_path / "1").iterdir()}
    four = {p.name: cv2.imread(str(p)) for p in (tmp_path / "4").iterdir()}
    assert one.keys() == four.keys() and len(one) == 6
    for name in one:  # the same drawings; a mask pixel at exactly 0.5 may flip with float rounding (1e-7)
        assert (one[name] != four[name]).any(axis=2).sum() <= 10, name


def test_gt_is_drawn_beside_the_predictions(run, tmp_path, capsys):
    extra = tmp_path / "extra"
    extra.mkdir()
    cv2.imwrite(str(extra / "not_in_json.png"), np.full((60, 80, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(run / "last.pt"), "--images", str(IMAGES), str(extra), "--gt", str(GT),
                         "--output", str(out), "--score-thresh", "0.2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("ground truth") == 6 and "not_in_json.png" in printed and "not in --gt" in printed
    for path in IMAGES.iterdir():
        h, w = cv2.imread(str(path)).shape[:2]
        drawn = cv2.imread(str(out / (path.stem + ".png")))
        assert drawn.shape == (h + 22, 2 * w + 4, 3)  # legend strip over [predictions | ground truth]
        green = (np.abs(drawn[22:, w + 4:].astype(int) - GT_COLOUR).sum(axis=2) == 0).sum()
        assert (green > 100) == (path.name != "000000000089.jpg")  # green boxes / labels; that one has no objects
    assert cv2.imread(str(out / "not_in_json.png")).shape == (60, 80, 3)  # no ground truth: predictions only


def test_extreme_aspect_ratio_is_refused_naming_the_file(run, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.zeros((50, 10000, 3), np.uint8))
    out = tmp_path / "out"
    common = ["--checkpoint", str(run / "last.pt"), "--output", str(out), "--device", "cpu"]
    assert predict.main([*common, "--images", str(strip)]) == 2
    err = _error(capsys)
    assert "strip.png is 10000x50" in err and "crop or split" in err and not out.exists()
    wide = tmp_path / "wide.png"  # 10:1 resizes to 160x16 px: fine
    cv2.imwrite(str(wide), np.zeros((100, 1000, 3), np.uint8))
    assert predict.main([*common, "--images", str(wide)]) == 0


@pytest.mark.parametrize("extra, expected", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--gt", str(FIXTURES / "coco_sample" / "SOURCE.md")], "not valid JSON"),
    (["--gt", "missing.json"], "cannot read"),
    (["model.num_classes=5"], "does not match"),  # was a RuntimeError traceback (size mismatch)
])
def test_bad_options_are_one_line(run, tmp_path, capsys, extra, expected):
    assert predict.main(["--checkpoint", str(run / "last.pt"), "--images", str(IMAGES), "--output",
                         str(tmp_path / "o"), "--device", "cpu", *extra]) == 2
    assert expected in _error(capsys)


def test_workers_give_the_same_detections_and_headers_follow_exif(run, tmp_path):
    from PIL import Image

    from resbackbones.data.images import read_image
    from resbackbones.deploy.predict import header_size

    model = load_detector(run / "last.pt").model
    paths = sorted(IMAGES.iterdir())
    serial = list(predict_images(model, paths, batch_size=4, device=torch.device("cpu")))
    parallel = list(predict_images(model, paths, batch_size=4, device=torch.device("cpu"), num_workers=2))
    assert [p for p, _, _ in serial] == [p for p, _, _ in parallel]
    for (_, a, x), (_, b, y) in zip(serial, parallel):
        assert np.array_equal(a, b) and all(torch.equal(x[k], y[k]) for k in x)
    # a JPEG stored 80x40 whose EXIF orientation turns it: decoded 40x80, and its header size says so (the batches
    # are formed from header sizes)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(turned, exif=exif.tobytes())
    assert header_size(turned) == read_image(turned).shape[:2] == (80, 40)
