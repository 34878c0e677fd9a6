#!/usr/bin/env python
"""Mask R-CNN R50-FPN: detectron2's own model vs ours (rb.build_detector: our ResNet-50 + FPN, torchvision heads),
plus detectron2's heads over our backbone, timed on the same real COCO images in one run.

Times one training step (forward + backward + SGD step) and one inference call per model, interleaving the models
each repeat so that load on a shared machine hits them alike; prints medians and ours / detectron2 ratios.
All models: random init, FrozenBN, freeze_at 2, 256-channel FPN p2..p6, RPN 2000/1000 pre/post-NMS proposals per
image in training and 1000/1000 at test, 512 RoIs per image at 25 % positives, 4-conv mask head, no resizing
inside the models (the images are resized once, here, to --short-side). Score threshold 0, so that each model
keeps 100 detections per image and runs its mask head on as many boxes (the weights are random).
Reports the median and the minimum of the repeats (the minimum is the least disturbed on a shared machine).

    python benchmarks/detectron2_vs_ours.py --images 2 --repeats 3 --short-side 512 [--device cuda] [--threads 2]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resbackbones as rb  # noqa: E402
from resbackbones.config.detector import DetectorConfig  # noqa: E402
from machine import describe  # noqa: E402

DEFAULT_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample"


def load_batch(root: Path, *, count: int, short_side: int):
    """The first `count` COCO sample images with objects, resized to short side `short_side` (RGB uint8 [H, W, 3]) with their non-crowd
    boxes (xyxy), contiguous labels 0..79 and binary masks [K, H, W]."""
    from pycocotools.coco import COCO

    coco = COCO(str(root / "annotations.json"))
    contiguous = {cat: i for i, cat in enumerate(sorted(coco.getCatIds()))}
    batch = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd")]
        if not anns:
            continue  # a training step needs at least one object per image
        if len(batch) == count:
            break
        info = coco.loadImgs(image_id)[0]
        image = cv2.cvtColor(cv2.imread(str(root / "images" / info["file_name"])), cv2.COLOR_BGR2RGB)
        scale = short_side / min(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        masks = np.stack([cv2.resize(coco.annToMask(a), size, interpolation=cv2.INTER_NEAREST) for a in anns])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32) * scale
        batch.append(dict(image=cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), boxes=boxes,
                          labels=np.array([contiguous[a["category_id"]] for a in anns]), masks=masks))
    return batch


# -- detectron2 -------------------------------------------------------------------------------------------------
def d2_model(*, ours_backbone: bool, device: str):
    from detectron2.config import get_cfg
    from detectron2.model_zoo import get_config_file
    from detectron2.modeling import build_model

    from resbackbones.integrations.detectron2 import add_resbackbones_config

    cfg = get_cfg()
    add_resbackbones_config(cfg)
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    # torchvision conventions for all models: RGB input, ImageNet mean/std, stride in the 3x3 conv.
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep 100 detections per image in every model
    if ours_backbone:
        cfg.MODEL.BACKBONE.NAME = "build_resbackbones_fpn_backbone"
        cfg.MODEL.RESBACKBONES.ARCH = "resnet50"
        cfg.MODEL.RESBACKBONES.STRIDE_IN_1X1 = False
    return build_model(cfg)


def d2_inputs(batch, device):
    from detectron2.structures import BitMasks, Boxes, Instances

    inputs = []
    for sample in batch:
        height, width = sample["image"].shape[:2]
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.as_tensor(sample["boxes"]))
        instances.gt_classes = torch.as_tensor(sample["labels"], dtype=torch.int64)
        instances.gt_masks = BitMasks(torch.as_tensor(sample["masks"], dtype=torch.bool))
        image = torch.as_tensor(np.ascontiguousarray(sample["image"].transpose(2, 0, 1)))
        inputs.append({"image": image.to(device), "instances": instances.to(device), "height": height, "width": width})
    return inputs


# -- ours -------------------------------------------------------------------------------------------------------
def our_model(*, short_side: int, max_side: int, device: str):
    cfg = DetectorConfig()
    cfg.backbone.name = "resnet50"
    cfg.mask_head.enabled = True
    cfg.num_classes = 80
    cfg.input.min_size = (short_side,)
    cfg.input.max_size = max_side
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 2000, 1000
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 1000, 1000
    cfg.roi_heads.batch_size_per_image = 512
    cfg.roi_heads.sampling_ratio = 0  # detectron2's ROIAlignV2 samples adaptively too
    cfg.roi_heads.score_thresh = 0.0  # random weights: keep 100 detections per image, as for detectron2
    return rb.build_detector(cfg).to(device)


def our_inputs(batch, device):
    images = [torch.as_tensor(s["image"].transpose(2, 0, 1) / 255.0, dtype=torch.float32, device=device) for s in batch]
    targets = [{"boxes": torch.as_tensor(s["boxes"], device=device),
                "labels": torch.as_tensor(s["labels"] + 1, dtype=torch.int64, device=device),
                "masks": torch.as_tensor(s["masks"], dtype=torch.uint8, device=device)} for s in batch]
    return images, targets


# -- timing -----------------------------------------------------------------------------------------------------
def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_steps(name, model, batch, device):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    if name == "ours (torchvision heads)":
        images, targets = our_inputs(batch, device)
        train_call = lambda: model(images, targets)  # noqa: E731
        test_call = lambda: model(images)  # noqa: E731
    else:
        from detectron2.utils.events import EventStorage

        inputs = d2_inputs(batch, device)
        storage = EventStorage()  # detectron2's heads log training statistics into the current storage

        def train_call():
            with storage:
                return model(inputs)

        test_call = lambda: model([{k: v for k, v in d.items() if k != "instances"} for d in inputs])  # noqa: E731

    def train_step():
        model.train()
        losses = train_call()
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total.detach())

    def inference():
        model.eval()
        with torch.no_grad():
            return test_call()

    return train_step, inference, sum(p.numel() for p in model.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco", type=Path, default=DEFAULT_COCO, help="COCO sample folder (annotations.json, images/)")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--short-side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the results as json here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = load_batch(args.coco, count=args.images, short_side=args.short_side)
    max_side = max(max(s["image"].shape[:2]) for s in batch)
    models = {
        "detectron2": d2_model(ours_backbone=False, device=args.device),
        "detectron2 heads + our backbone": d2_model(ours_backbone=True, device=args.device),
        "ours (torchvision heads)": our_model(short_side=args.short_side, max_side=max_side, device=args.device),
    }
    steps = {name: make_steps(name, model, batch, args.device) for name, model in models.items()}
    times = {name: {"train_step_s": [], "inference_s": []} for name in models}
    for name, (train_step, inference, _) in steps.items():  # warm-up: allocator, oneDNN kernel selection
        train_step()
        inference()
        print(f"warmed up: {name}", flush=True)
    for repeat in range(args.repeats):
        for name, (train_step, inference, _) in steps.items():
            for key, fn in (("train_step_s", train_step), ("inference_s", inference)):
                _sync(args.device)
                start = time.perf_counter()
                fn()
                _sync(args.device)
                times[name][key].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: train {times[name]['train_step_s'][-1]:.2f}s, "
                  f"inference {times[name]['inference_s'][-1]:.2f}s", flush=True)
    shapes = [tuple(s["image"].shape[:2]) for s in batch]
    print(f"machine: {describe(torch.device(args.device))}")
    print(f"Mask R-CNN R50-FPN, {args.images} COCO images {shapes}, device {args.device}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats} (interleaved)")
    results = {}
    for stat_name, stat in (("median", statistics.median), ("min", min)):
        print(f"[{stat_name}] {'model':34s} {'params':>8s} {'train step s':>13s} {'inference s':>12s} "
              f"{'train ratio':>12s} {'infer ratio':>12s}")
        base = {k: stat(times["detectron2"][k]) for k in ("train_step_s", "inference_s")}
        for name, (_, _, params) in steps.items():
            value = {k: stat(v) for k, v in times[name].items()}
            ratio = {k: value[k] / base[k] for k in value}
            results.setdefault(name, dict(params=params, raw=times[name]))[stat_name] = dict(
                **value, train_ratio_vs_d2=ratio["train_step_s"], inference_ratio_vs_d2=ratio["inference_s"])
            print(f"[{stat_name}] {name:34s} {params / 1e6:7.1f}M {value['train_step_s']:13.3f} "
                  f"{value['inference_s']:12.3f} {ratio['train_step_s']:12.2f} {ratio['inference_s']:12.2f}")
    if args.out:
        args.out.write_text(json.dumps(dict(device=args.device, images=shapes, repeats=args.repeats,
                                            threads=torch.get_num_threads(), results=results), indent=2))
    return results


if __name__ == "__main__":
    main()
