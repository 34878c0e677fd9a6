"""Issue 22 item 2: tools/eval_coco.py and tools/predict.py take an exported file (.pt TorchScript, .pt2, .onnx)
wherever they take a checkpoint. On a small random detector and its exports: eval_coco's COCO AP on each file equals
the checkpoint's (fp32, 3 decimals) over the 6 fixture images (mixed sizes); predict gives the same detections
(labels equal, boxes within 1e-3 of the image size); a broken file or an option the export fixed is one line, exit 2.

The .pt2 and .onnx come from one torch.export capture (module fixture): that capture and the ONNX conversion are
most of this file's time."""
import json

import pytest
import torch

from conftest import FIXTURES, random_detector_run
import eval_coco  # noqa: E402
import predict  # noqa: E402
import export_detector  # noqa: E402

IMAGES = FIXTURES / "coco_sample" / "images"
SMALL = ["model.input.min_size=[128]", "model.input.max_size=160", "model.rpn.pre_nms_top_n_test=100",
         "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_img=8"]
FORMATS = ("torchscript", "export", "onnx")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, {format: exported file}, ground truth json): the checkpoint's top-4 detections per image."""
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.export import export_facts, write_exported
    from resbackbones.deploy.predict import predict_images

    root = tmp_path_factory.mktemp("deploy_tools")
    folder = random_detector_run(root, SMALL)
    loaded = load_detector(folder / "last.pt")
    files = {"torchscript": root / "det.pt", "export": root / "det.pt2", "onnx": root / "det.onnx"}
    assert export_detector.main(["--checkpoint", str(folder / "last.pt"), "--format", "torchscript",
                                 "--output", str(files["torchscript"])]) == 0
    write_exported(loaded.model, {"export": files["export"], "onnx": files["onnx"]},  # the tool's facts, one trace
                   label_names=loaded.names_list(), metadata=export_facts(loaded))
    paths = sorted(IMAGES.iterdir())
    records, annotations = [], []
    for i, (path, image, output) in enumerate(predict_images(loaded.model, paths, batch_size=1,
                                                             device=torch.device("cpu")), start=1):
        records.append({"id": i, "file_name": path.name, "height": image.shape[0], "width": image.shape[1]})
        for (x1, y1, x2, y2), label in zip(output["boxes"][:4].tolist(), output["labels"][:4].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    gt = root / "gt.json"
    gt.write_text(json.dumps({"images": records, "annotations": annotations,
                              "categories": [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]}))
    return folder, files, gt


def _eval(checkpoint, gt, out, *extra):
    return eval_coco.main(["--checkpoint", str(checkpoint), "--gt", str(gt), "--images", str(IMAGES),
                           "--iou-type", "bbox", "segm", "--out", str(out), *extra])


def test_eval_coco_on_exported_files_equals_checkpoint(run, tmp_path, capsys):
    folder, files, gt = run
    assert _eval(folder / "last.pt", gt, tmp_path / "ckpt.json", "--device", "cpu", "--amp", "none",
                 "test.batch_size=1") == 0
    expected = json.loads((tmp_path / "ckpt.json").read_text())
    assert expected["bbox"]["AP"] > 0.5
    for fmt, path in files.items():
        assert _eval(path, gt, tmp_path / f"{fmt}.json") == 0, fmt
        assert "exported" in capsys.readouterr().out
        got = json.loads((tmp_path / f"{fmt}.json").read_text())
        with capsys.disabled():  # the numbers, with pytest -s
            print(fmt, {iou: (expected[iou]["AP"], got[iou]["AP"]) for iou in ("bbox", "segm")})
        for iou in ("bbox", "segm"):
            assert round(got[iou]["AP"], 3) == round(expected[iou]["AP"], 3), (fmt, iou)
            assert got[iou] == pytest.approx(expected[iou], abs=1e-3), (fmt, iou)


def test_predict_on_exported_files_equals_checkpoint(run, tmp_path, capsys):
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.predict import predict_images
    from resbackbones.deploy.run_exported import predict_exported

    folder, files, _ = run
    paths = sorted(IMAGES.iterdir())
    model = load_detector(folder / "last.pt").model
    expected = {p: o for p, _, o in predict_images(model, paths, batch_size=4, device=torch.device("cpu"))}
    for fmt in FORMATS:  # TorchScript too: its resize takes eager's float64 scale (deploy/scriptable.py)
        names, found = predict_exported(files[fmt], paths, batch_size=4)
        assert names == {1: "a", 2: "b", 3: "c"}
        for path, image, output in found:
            e = expected[path]
            assert len(e["boxes"]) > 0 and torch.equal(output["labels"], e["labels"]), (fmt, path)
            assert (output["boxes"] - e["boxes"]).abs().max() <= 1e-3 * max(image.shape[:2]), (fmt, path)
    # the tool itself: same PNGs written, same detection counts printed
    assert predict.main(["--checkpoint", str(folder / "last.pt"), "--images", str(IMAGES), "--output",
                         str(tmp_path / "ckpt"), "--amp", "none", "--score-thresh", "0.1"]) == 0
    ckpt_lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if " -> " in line]
    assert predict.main(["--checkpoint", str(files["onnx"]), "--images", str(IMAGES), "--output",
                         str(tmp_path / "onnx"), "--score-thresh", "0.1"]) == 0
    onnx_lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if " -> " in line]
    assert len(ckpt_lines) == 6 and onnx_lines == ckpt_lines
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(p.name for p in (tmp_path / "ckpt").iterdir())


def test_exported_file_is_told_from_a_checkpoint_by_content(run, tmp_path):
    from resbackbones.deploy.run_exported import is_exported

    folder, files, _ = run
    assert is_exported(files["torchscript"]) and is_exported(files["export"]) and is_exported(files["onnx"])
    assert not is_exported(folder / "last.pt")
    renamed = tmp_path / "checkpoint.pt"  # a TorchScript archive under any name is still one
    renamed.write_bytes(files["torchscript"].read_bytes())
    assert is_exported(renamed)


def test_broken_files_and_fixed_options_are_one_line_exit_2(run, tmp_path, capsys):
    folder, files, gt = run
    text = tmp_path / "model.onnx"
    text.write_text("not a model\n")
    truncated = tmp_path / "model.pt2"
    truncated.write_bytes(files["export"].read_bytes()[:4096])
    for bad in (text, truncated):
        assert _eval(bad, gt, tmp_path / "s.json") == 2, bad
        err = capsys.readouterr().err.strip()
        assert str(bad) in err and len(err.splitlines()) == 1, err
        assert predict.main(["--checkpoint", str(bad), "--images", str(IMAGES), "--output", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err.strip()
        assert str(bad) in err and len(err.splitlines()) == 1, err
    for extra, expected in [(["model.roi_heads.score_thresh=0.5"], "re-export"), (["--amp", "bf16"], "--amp bf16"),
                            (["--config", str(folder / "config.yaml")], "--config")]:
        assert _eval(files["onnx"], gt, tmp_path / "s.json", *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert expected in err and str(files["onnx"]) in err and len(err.splitlines()) == 1, err
        assert predict.main(["--checkpoint", str(files["onnx"]), "--images", str(IMAGES), "--output",
                             str(tmp_path / "p"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


def test_scoring_settings_travel_with_the_export_and_can_be_overridden(run, tmp_path, capsys):
    """The export records its checkpoint's test.mask_threshold / test.max_dets; eval_coco scores an exported file
    with them, or with test.* overrides (how detections are scored, not what the model computes), and reports the
    max_dets used; bad values are one line."""
    from resbackbones.deploy import load

    _, files, gt = run
    for path in files.values():
        assert load(path).metadata["evaluation"] == {"mask_threshold": 0.5, "max_dets": [1, 10, 100]}
    assert _eval(files["onnx"], gt, tmp_path / "a.json", "test.max_dets=[1, 2, 3]", "test.mask_threshold=0.3") == 0
    scored = json.loads((tmp_path / "a.json").read_text())
    assert scored["max_dets"] == [1, 2, 3], scored.get("max_dets")
    assert _eval(files["onnx"], gt, tmp_path / "b.json") == 0
    default = json.loads((tmp_path / "b.json").read_text())
    assert default["max_dets"] == [1, 10, 100] and default["bbox"]["AP"] >= scored["bbox"]["AP"]
    capsys.readouterr()
    for bad, expected in (("test.max_dets=5", "max_dets"), ("test.mask_threshold=2", "test.mask_threshold")):
        assert _eval(files["onnx"], gt, tmp_path / "c.json", bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
