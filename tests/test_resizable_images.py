"""Images the detector cannot resize (a 10000x50 strip shrinks under a pixel across and fails inside interpolate)
are refused before any work, naming the file and its size: in evaluation of a checkpoint (tools/eval_coco.py) and
from a COCO json's width/height records (train_det checks its train and val sets the same way)."""
import json

import pytest
import torch

from conftest import FIXTURES, REPO
from resbackbones.config import dump_yaml, load_config
from resbackbones.config.det import DetTrainConfig
from resbackbones.data.errors import DataError
from resbackbones.data.resizable import check_coco_images_resizable, check_resizable
from resbackbones.detection.builder import build_detector
import eval_coco  # noqa: E402

GT = FIXTURES / "coco_sample" / "annotations.json"


def test_a_strip_is_refused_and_a_normal_image_passes():
    check_resizable("ok.jpg", 480, 640, min_size=800, max_size=1333)
    check_resizable("wide.jpg", 100, 1333 // 8 * 100, min_size=800, max_size=1333)  # exactly 8 px across: kept
    with pytest.raises(DataError, match=r"strip.png is 10000x50: .* under 8 px across; crop or split it into pieces "
                                        r"of aspect ratio at most 166:1"):
        check_resizable("strip.png", 50, 10000, min_size=800, max_size=1333)


def test_coco_records_use_the_smallest_training_size_and_name_the_json():
    images = [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 640},
              {"id": 7, "file_name": "b.jpg", "height": 20, "width": 1000},
              {"id": 9, "file_name": "no_size.jpg"}]  # checked when decoded
    check_coco_images_resizable(images, source="val.json", min_size=800, max_size=1333)  # b: 1333x26.7, kept
    with pytest.raises(DataError, match=r"b.jpg \(id 7 in train.json\) is 1000x20"):
        check_coco_images_resizable(images, source="train.json", min_size=[800, 128], max_size=160)


def test_eval_coco_checkpoint_refuses_a_strip_before_running_the_model(tmp_path, capsys):
    cfg = load_config(DetTrainConfig, REPO / "configs" / "quickstart.yaml",
                      ["model.input.min_size=[128]", "model.input.max_size=160"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    torch.save({"model": build_detector(cfg.model).state_dict()}, tmp_path / "last.pt")
    gt = json.loads(GT.read_text())
    gt["images"][0].update(width=10000, height=50)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code = eval_coco.main(["--gt", str(tmp_path / "gt.json"), "--checkpoint", str(tmp_path / "last.pt"),
                           "--config", str(tmp_path / "config.yaml"), "--images", str(FIXTURES / "coco_sample" / "images"),
                           "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{gt['images'][0]['file_name']} (id {gt['images'][0]['id']} in {tmp_path / 'gt.json'}) is 10000x50" in err
    assert not list(tmp_path.glob("*.detections.json"))  # nothing ran, nothing written


def test_train_det_refuses_a_strip_in_its_training_json_before_training(tmp_path, capsys):
    import train_det

    gt = json.loads(GT.read_text())
    gt["images"][1].update(width=50, height=10000)
    (tmp_path / "train.json").write_text(json.dumps(gt))
    images = FIXTURES / "coco_sample" / "images"
    code = train_det.main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(tmp_path / "run"),
                           "--device", "cpu", "data.train.kind=coco", f"data.train.image_root={images}",
                           f"data.train.ann_file={tmp_path / 'train.json'}", "data.val.kind=coco",
                           f"data.val.image_root={images}", f"data.val.ann_file={GT}", f"model.num_classes={len(gt['categories'])}",
                           "model.input.min_size=[128]", "model.input.max_size=160", "data.cache_images=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert f"(id {gt['images'][1]['id']} in {tmp_path / 'train.json'}) is 50x10000" in err.splitlines()[-1], err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
