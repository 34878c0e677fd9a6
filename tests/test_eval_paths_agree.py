"""One evaluation path (issue 15 step 13): on one tiny checkpoint, train_det's final eval.json, train_det --eval-only
and eval_coco --checkpoint report identical COCO stats (same model rebuilt from the checkpoint's recorded config,
same batches of test.batch_size, same mask threshold, same autocast)."""
import json

import pytest

from conftest import REPO, tiny_train_det_args
import eval_coco  # noqa: E402
import train_det  # noqa: E402

IOU_TYPES = ("bbox", "segm")


def test_final_eval_eval_only_and_eval_coco_agree(tmp_path):
    data, out = tmp_path / "shapes", tmp_path / "run"
    # 3 val images in batches of 2: a batch of two and a batch of one, as the final evaluation ran them
    extra = ("solver.max_iter=2", "model.roi_heads.score_thresh=0.0", "test.batch_size=2")
    assert train_det.main(tiny_train_det_args(data, out, *extra)) == 0
    final = json.loads((out / "eval.json").read_text())
    last = out / "checkpoints" / "last.pt"
    assert train_det.main(tiny_train_det_args(data, out, *extra, "--eval-only", "--weights", str(last))) == 0
    eval_only = json.loads((out / "checkpoints" / "last.eval.json").read_text())
    common = ["--checkpoint", str(last), "--gt", str(data / "val" / "annotations.json"), "--images",
              str(data / "val" / "images"), "--iou-type", *IOU_TYPES, "--device", "cpu"]
    # the amp of the checkpoint's config (test.amp, else train.amp), as the trainer's evaluation; and set by --amp
    assert eval_coco.main([*common, "--out", str(tmp_path / "stats.json")]) == 0
    assert eval_coco.main([*common, "--amp", final["amp"], "--out", str(tmp_path / "amp.json")]) == 0
    checkpoint_form = [json.loads((tmp_path / name).read_text()) for name in ("stats.json", "amp.json")]
    assert len(final["bbox"]) == len(final["segm"]) == 12  # real stats, not the no-detection stub
    for iou in IOU_TYPES:
        assert eval_only[iou] == final[iou] == checkpoint_form[0][iou] == checkpoint_form[1][iou], iou
        per_category = [r["per_category"][iou] for r in (eval_only, final, *checkpoint_form)]
        assert all(p == per_category[0] for p in per_category), iou


SMALL = ["model.input.min_size=[128]", "model.input.max_size=160", "model.rpn.pre_nms_top_n_test=100",
         "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_img=8"]


def test_mixed_sizes_batch_1_and_4_and_predict_agree(tmp_path):
    """Mixed image sizes (the 6 fixture images: 3 padded shapes) through eval_coco --checkpoint at test.batch_size
    1 and 4, and predict's detections scored with --dt: one set of stats (issue 23 step 5: one test loader, batches
    of one padded shape). The ground truth is the model's own top detections of each image alone (predict, batch 1),
    so the AP is high and moves with any change of a box or score."""
    import torch

    from conftest import FIXTURES, random_detector_run
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.predict import predict_images
    from resbackbones.evaluation.coco_results import to_coco_results

    images = FIXTURES / "coco_sample" / "images"
    run = random_detector_run(tmp_path, SMALL)
    model = load_detector(run / "last.pt").model
    paths = sorted(images.iterdir())
    ids = {path.name: i for i, path in enumerate(paths, start=1)}
    records, annotations, predicted = [], [], {}
    for batch_size in (1, 4):
        outputs = list(predict_images(model, paths, batch_size=batch_size, device=torch.device("cpu")))
        predicted[batch_size] = to_coco_results([o for _, _, o in outputs], [ids[p.name] for p, _, _ in outputs],
                                                {1: 1, 2: 2, 3: 3})
    for path, image, output in predict_images(model, paths, batch_size=1, device=torch.device("cpu")):
        records.append({"id": ids[path.name], "file_name": path.name, "height": image.shape[0],
                        "width": image.shape[1]})
        for (x1, y1, x2, y2), label in zip(output["boxes"][:4].tolist(), output["labels"][:4].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": ids[path.name], "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": records, "annotations": annotations,
                              "categories": [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]}))
    common = ["--checkpoint", str(run / "last.pt"), "--gt", str(gt), "--images", str(images), "--device", "cpu",
              "--amp", "none"]
    for size in (1, 4):
        assert eval_coco.main([*common, "--out", str(tmp_path / f"b{size}.json"), f"test.batch_size={size}"]) == 0
    for size in (1, 4):
        (tmp_path / f"p{size}.json").write_text(json.dumps(predicted[size]))
        assert eval_coco.main(["--gt", str(gt), "--dt", str(tmp_path / f"p{size}.json"), "--out",
                               str(tmp_path / f"ps{size}.json")]) == 0
    stats = [json.loads((tmp_path / f"{name}.json").read_text())["bbox"] for name in ("b1", "b4", "ps1", "ps4")]
    assert stats[0]["AP"] > 0.5
    # equal up to the float rounding of batched kernels (~1e-5 px on CPU; tests/test_det_test_loader.py: SAME)
    assert all(s == pytest.approx(stats[0], abs=1e-6) for s in stats), stats
