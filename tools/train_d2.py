#!/usr/bin/env python
"""detectron2's train_net with our backbones: register a COCO-format dataset, train with DefaultTrainer, evaluate
with COCOEvaluator (bbox, and segm when MODEL.MASK_ON).

    python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml \
        --train-json data/train.json --train-images data/train/ --test-json data/val.json --test-images data/val/ \
        MODEL.RESBACKBONES.WEIGHTS weights/resnet50_tv.safetensors SOLVER.MAX_ITER 2000 OUTPUT_DIR runs/d2
    python tools/train_d2.py --config-file ... --test-json ... --test-images ... --eval-only MODEL.WEIGHTS runs/d2/model_final.pth

MODEL.ROI_HEADS.NUM_CLASSES (and RETINANET.NUM_CLASSES) follow the training json's categories; RLE masks set
INPUT.MASK_FORMAT bitmask. The preprocessing
recorded in MODEL.RESBACKBONES.WEIGHTS (input format, pixel mean/std, stride_in_1x1) is adopted and printed.
COCOEvaluator writes OUTPUT_DIR/inference/coco_instances_results.json (original category ids), which
tools/eval_coco.py scores too. --num-gpus/--num-machines/--dist-url launch DDP as in detectron2.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402

from resbackbones.integrations.detectron2 import add_resbackbones_config, apply_weights_conventions  # noqa: E402

TRAIN, TEST = "resbackbones_train", "resbackbones_test"


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def _read_json(json_path: str) -> dict:
    with open(json_path) as handle:
        return json.load(handle)


def _num_classes(coco: dict, json_path: str) -> int:
    if not coco.get("categories"):
        raise SystemExit(f"{json_path}: no 'categories' in the COCO json")
    return len(coco["categories"])


def _uses_rle_masks(coco: dict) -> bool:
    # detectron2 reads polygons unless told otherwise; RLE masks (dicts) need INPUT.MASK_FORMAT bitmask.
    # Crowd regions are RLE in COCO itself but never reach training, so only non-crowd annotations count.
    return any(isinstance(a.get("segmentation"), dict) for a in coco.get("annotations", []) if not a.get("iscrowd"))


def register_datasets(args) -> None:
    """register_coco_instances for the given jsons (re-registers a name when called again with other files)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, ann, images in ((TRAIN, args.train_json, args.train_images), (TEST, args.test_json, args.test_images)):
        if not ann:
            continue
        for path in (ann, images):
            if not path or not os.path.exists(path):
                raise SystemExit(f"{name}: {path!r} does not exist (give --{name.split('_')[1]}-json and -images)")
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, ann, images)


def setup(args):
    cfg = get_cfg()
    add_resbackbones_config(cfg)
    cfg.merge_from_file(args.config_file)
    if args.train_json:
        cfg.DATASETS.TRAIN = (TRAIN,)
    if args.test_json:
        cfg.DATASETS.TEST = (TEST,)
    elif args.train_json:
        cfg.DATASETS.TEST = ()  # the yaml's COCO val is not registered here: no evaluation without --test-json
    class_source = args.train_json or args.test_json
    if class_source:
        coco = _read_json(class_source)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = _num_classes(coco, class_source)
        if _uses_rle_masks(coco):
            cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.merge_from_list(args.opts)
    for line in apply_weights_conventions(cfg):
        print(f"[train_d2] adopted from the backbone weights: {line}")
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    register_datasets(args)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--train-json", default="", help="COCO instances json of the training set")
    parser.add_argument("--train-images", default="", help="folder the training json's file_name entries are in")
    parser.add_argument("--test-json", default="", help="COCO instances json evaluated by COCOEvaluator")
    parser.add_argument("--test-images", default="", help="folder of the test images")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("[train_d2] command line:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
