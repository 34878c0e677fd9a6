"""One evaluation path (issue 15 step 13): on one tiny checkpoint, train_det's final eval.json, train_det --eval-only
and eval_coco --checkpoint report identical COCO stats (same model rebuilt from the checkpoint's recorded config,
same batches of test.ims_per_batch, same mask threshold, same autocast)."""
import json

from conftest import REPO, tiny_train_det_args
import eval_coco  # noqa: E402
import train_det  # noqa: E402

IOU_TYPES = ("bbox", "segm")


def test_final_eval_eval_only_and_eval_coco_agree(tmp_path):
    data, out = tmp_path / "shapes", tmp_path / "run"
    # 3 val images in batches of 2: a batch of two and a batch of one, as the final evaluation ran them
    extra = ("solver.max_iter=2", "model.roi_heads.score_thresh=0.0", "test.ims_per_batch=2")
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
