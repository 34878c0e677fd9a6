"""One SGD step on real COCO images (tests/fixtures/coco_sample) for each detector layout: finite losses that
backpropagate into the trainable backbone stages, and inference that returns COCO-convertible outputs."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import resbackbones as rb
from resbackbones.data.coco import CocoDetection
from resbackbones.detection import DetectorConfig, c4_defaults, vgg16_defaults
from resbackbones.evaluation import category_mapping, to_coco_results

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "coco_sample"


def _batch(n=2):
    ds = CocoDetection(SAMPLE / "annotations.json", SAMPLE / "images", with_masks=True)
    images, targets = [], []
    for index in range(len(ds)):
        image, target = ds[index]
        if len(target["boxes"]) == 0:
            continue
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255)
        targets.append({"boxes": torch.as_tensor(target["boxes"], dtype=torch.float32),
                        "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
                        "masks": torch.as_tensor(target["masks"], dtype=torch.uint8),
                        "image_id": target["image_id"]})
        if len(images) == n:
            return images, targets, ds
    raise AssertionError("COCO sample has too few annotated images")


def _small(cfg: DetectorConfig) -> DetectorConfig:
    cfg.input.min_size, cfg.input.max_size = (160,), 224
    cfg.rpn.pre_nms_top_n_train = cfg.rpn.pre_nms_top_n_test = 300
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = 64
    cfg.roi_heads.batch_size_per_image = 32
    cfg.roi_heads.score_thresh = 0.0
    cfg.roi_heads.detections_per_img = 20
    return cfg


def _configs():
    faster = DetectorConfig()
    mask = DetectorConfig()
    mask.mask_head.enabled = True
    vgg = vgg16_defaults()
    c4 = c4_defaults()
    c4.backbone.name = "resnet18"  # the C4 layout's wiring; res5 per RoI of ResNet-50 is too slow for a unit test
    c4.mask_head.enabled = True
    return {"faster_r50_fpn": faster, "mask_r50_fpn": mask, "faster_vgg16": vgg, "mask_r18_c4": c4}


@pytest.mark.parametrize("name", list(_configs()))
def test_one_train_step_on_coco_sample(name):
    cfg = _small(_configs()[name])
    cfg.num_classes = 80
    images, targets, ds = _batch()
    model = rb.build_detector(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    model.train()
    losses = model(images, [{k: v for k, v in t.items() if k != "image_id"} for t in targets])
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    if cfg.mask_head.enabled:
        expected.add("loss_mask")
    assert set(losses) == expected
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    # the last backbone stage is trainable (freeze_at leaves it) and receives gradient from the heads
    last_stage = list(model.backbone.body.stages)[-1]
    grads = [p.grad for p in model.backbone.body.stages[last_stage].parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for image, output in zip(images, outputs):
        assert output["boxes"].shape[1] == 4 and len(output["boxes"]) == len(output["scores"])
        if len(output["boxes"]):
            assert (output["boxes"][:, 2] <= image.shape[2] + 1e-3).all()  # mapped back to the input image size
        if cfg.mask_head.enabled:
            assert output["masks"].shape[1:] == (1, *image.shape[1:])
    results = to_coco_results(outputs, [t["image_id"] for t in targets], category_mapping(ds.coco.dataset["categories"]))
    assert all(r["category_id"] in ds.coco.getCatIds() for r in results)
