"""A detectron2 Mask R-CNN with our backbone on real COCO images (the 6-image COCO sample), through detectron2's own
dataset registration, mapper and loader: a training step gives finite losses that update our backbone, and
inference returns boxes, classes and masks at the input resolution."""
import math

import pytest
import torch

from conftest import REPO, require_detectron2, require_shared


require_detectron2()

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader  # noqa: E402
from detectron2.data import detection_utils  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from resbackbones.integrations import detectron2 as rbd2  # noqa: E402

DATASET = "resbackbones_test_coco_sample"


@pytest.fixture(scope="module")
def coco_sample():
    root = require_shared("data/coco_sample")
    if DATASET not in DatasetCatalog.list():
        register_coco_instances(DATASET, {}, str(root / "annotations.json"), str(root / "images"))
    return DATASET


def _small_cfg():
    """Mask R-CNN R50-FPN (our yaml), shrunk for a CPU test: short side 192, few proposals and RoI samples.

    GroupNorm in the backbone: with random weights, FrozenBN's identity statistics let activations grow block
    after block (logits in the thousands), whereas GN keeps them normalised, as pretrained statistics would."""
    cfg = get_cfg()
    rbd2.add_resbackbones_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "detectron2" / "mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESBACKBONES.NORM", "GN",
        "INPUT.MIN_SIZE_TRAIN", (192,), "INPUT.MAX_SIZE_TRAIN", 256, "INPUT.MIN_SIZE_TEST", 192,
        "INPUT.MAX_SIZE_TEST", 256, "INPUT.RANDOM_FLIP", "none",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 300, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 300, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 20,
        "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "DATALOADER.ASPECT_RATIO_GROUPING", False,
    ])
    return cfg


def test_mask_rcnn_with_our_backbone_trains_and_infers_on_coco(coco_sample):
    cfg = _small_cfg()
    cfg.DATASETS.TRAIN = (coco_sample,)
    model = build_model(cfg)
    assert isinstance(model.backbone.bottom_up, rbd2.ResBackbone)
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2 and all(len(d["instances"]) > 0 for d in batch)
    assert batch[0]["instances"].has("gt_masks")

    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    res3 = "backbone.bottom_up.res3.0.conv1.weight"
    assert res3 in trainable and "backbone.bottom_up.res2.0.conv1.weight" not in trainable  # FREEZE_AT 2
    before = trainable[res3].detach().clone()
    optimizer = torch.optim.SGD(trainable.values(), lr=0.01, momentum=0.9)
    with EventStorage():  # detectron2's heads log training statistics into the current storage
        losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    total = sum(losses.values())
    for name, value in losses.items():
        assert math.isfinite(value.item()), f"{name} = {value.item()}"
    assert all(value.item() > 0 for value in losses.values())
    optimizer.zero_grad()
    total.backward()
    assert trainable[res3].grad is not None and trainable[res3].grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, trainable[res3])

    model.eval()
    dataset = DatasetCatalog.get(coco_sample)[:2]
    mapper = DatasetMapper(cfg, is_train=False)
    inputs = [mapper(dict(d)) for d in dataset]
    with torch.no_grad():
        outputs = model(inputs)
    for record, out in zip(dataset, outputs):
        instances = out["instances"]
        assert instances.image_size == (record["height"], record["width"])  # rescaled to the original image
        assert 0 < len(instances) <= 20
        assert instances.pred_masks.shape[1:] == (record["height"], record["width"])
        assert torch.isfinite(instances.pred_boxes.tensor).all()
        assert int(instances.pred_classes.max()) < cfg.MODEL.ROI_HEADS.NUM_CLASSES


def test_image_format_reaches_the_model_as_configured(coco_sample):
    # Our configs feed RGB (torchvision conventions); detectron2 reads images in cfg.INPUT.FORMAT order.
    cfg = _small_cfg()
    record = DatasetCatalog.get(coco_sample)[0]
    rgb = detection_utils.read_image(record["file_name"], format="RGB")
    mapped = DatasetMapper(cfg, is_train=False)(dict(record))["image"]  # [3, H', W'] in INPUT.FORMAT order
    assert cfg.INPUT.FORMAT == "RGB" and mapped.shape[0] == 3
    # Channel means of the resized image follow the file's RGB means (not reversed).
    expected = torch.as_tensor(rgb, dtype=torch.float32).mean(dim=(0, 1))
    got = mapped.float().mean(dim=(1, 2))
    assert torch.allclose(got, expected, atol=2.0)


def test_train_d2_trains_evaluates_and_eval_coco_agrees(tmp_path):
    """tools/train_d2.py end to end on embedded shapes data (2 iterations), then tools/eval_coco.py's scorer on
    the detections COCOEvaluator wrote gives COCOEvaluator's own numbers."""
    import importlib.util

    from resbackbones.data.shapes import write_shapes_coco
    from resbackbones.evaluation.coco import evaluate_coco

    root = write_shapes_coco(tmp_path / "shapes", num_images=4, seed=3, image_size=192)
    spec = importlib.util.spec_from_file_location("train_d2", REPO / "tools" / "train_d2.py")
    train_d2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_d2)
    ann, images = str(root / "annotations.json"), str(root / "images")
    out = tmp_path / "out"
    common = [
        "--config-file", str(REPO / "configs" / "detectron2" / "mask_rcnn_R_50_FPN_1x.yaml"),
        "MODEL.DEVICE", "cpu", "MODEL.RESBACKBONES.ARCH", "resnet18", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.001",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
    ]
    parser = train_d2.build_parser()
    train_d2.main(parser.parse_args(["--train-json", ann, "--train-images", images] + common))  # DefaultTrainer
    assert (out / "model_final.pth").is_file()
    cfg_text = (out / "config.yaml").read_text()
    assert "NUM_CLASSES: 3" in cfg_text and "MASK_FORMAT: bitmask" in cfg_text
    # The saved checkpoint, evaluated by detectron2's COCOEvaluator (--eval-only).
    results = train_d2.main(parser.parse_args(["--eval-only", "--test-json", ann, "--test-images", images] + common
                                              + ["MODEL.WEIGHTS", str(out / "model_final.pth")]))
    detections = out / "inference" / "coco_instances_results.json"
    assert detections.is_file()
    ours = evaluate_coco(ann, str(detections), iou_types=("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        d2_stats = results[iou_type]  # detectron2 reports AP in percent
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            expected = d2_stats[key] / 100.0 if d2_stats[key] == d2_stats[key] else -1.0  # NaN: undefined
            assert abs(ours[iou_type].stats[key] - expected) < 1e-9, (iou_type, key, ours[iou_type].stats[key], d2_stats[key])
