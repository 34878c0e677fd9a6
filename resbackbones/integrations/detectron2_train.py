"""What tools/train_d2.py needs besides detectron2's train_net: the config built and checked before any process
starts, and user errors as one line (D2UserError) instead of detectron2's assertions.

    cfg = build_cfg(args)          # args: detectron2's default_argument_parser + --train/test-json/-images

The COCO-json datasets themselves: integrations/detectron2_data.py (register_datasets).
"""
import os

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from ..engine.outputs import check_output_path
from .detectron2 import add_resbackbones_config
from .detectron2_data import TEST, TRAIN, D2UserError, check_dataset_args, read_coco_json, uses_rle_masks


def _merge(what: str, merge) -> None:
    try:
        merge()
    except (AssertionError, KeyError, ValueError, TypeError) as error:  # yacs reports bad keys / types this way
        text = " ".join(str(error).strip("'\"").split())
        raise D2UserError(f"{what}: {text}") from None


def build_cfg(args) -> CfgNode:
    """The detectron2 config of a train_d2 command line (not frozen; nothing written): the yaml, our datasets and
    their class count / mask format, then the KEY VALUE overrides. Raises D2UserError naming what is wrong."""
    if not os.path.isfile(args.config_file or ""):
        raise D2UserError(f"--config-file {args.config_file or '(none)'} not found; e.g. "
                          f"configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml")
    flags = [o for o in args.opts if str(o).startswith("--")]
    if flags:  # detectron2's parser hands everything after the first KEY VALUE pair to the config
        raise D2UserError(f"{flags[0]} comes after the KEY VALUE config overrides, which take the rest of the line: "
                          f"put the flags first")
    check_dataset_args(args)
    try:
        with open(args.config_file) as handle:
            node = yaml.compose(handle)  # parsed, not constructed: detectron2's yamls carry python tags
    except (OSError, yaml.YAMLError) as error:
        raise D2UserError(f"--config-file {args.config_file} is not readable YAML: "
                          f"{' '.join(str(error).split())}") from None
    if not isinstance(node, yaml.MappingNode):  # yacs died with AttributeError ('str' object has no attribute ...)
        raise D2UserError(f"--config-file {args.config_file} is not a mapping of detectron2 config keys (it holds "
                          f"{'nothing' if node is None else type(node).__name__.replace('Node', '').lower()}); e.g. "
                          f"configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml")
    cfg = get_cfg()
    add_resbackbones_config(cfg)
    _merge(f"--config-file {args.config_file}", lambda: cfg.merge_from_file(args.config_file))
    if args.train_json:
        cfg.DATASETS.TRAIN = (TRAIN,)
    if args.test_json:
        cfg.DATASETS.TEST = (TEST,)
    elif args.train_json:
        cfg.DATASETS.TEST = ()  # the yaml's COCO val is not registered here: no evaluation without --test-json
    class_source = args.train_json or args.test_json
    if class_source:
        coco = read_coco_json(class_source)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = len(coco["categories"])
        if uses_rle_masks(coco):
            cfg.INPUT.MASK_FORMAT = "bitmask"
    if args.train_json and not args.eval_only:  # detectron2 asserted "Dataset 'resbackbones_train' is empty!"
        train = coco if class_source == args.train_json else read_coco_json(args.train_json)
        missing = "images" if not train.get("images") else "annotations" if not train.get("annotations") else ""
        if missing:
            raise D2UserError(f"--train-json {args.train_json} has no {missing}: nothing to train on (detectron2 "
                              f"trains on annotated images only)")
    _merge("config overrides (KEY VALUE pairs of detectron2's config, e.g. SOLVER.MAX_ITER 100)",
           lambda: cfg.merge_from_list(args.opts))
    check_output_path(cfg.OUTPUT_DIR, "OUTPUT_DIR", folder=True)  # a file, or under one: NotADirectoryError
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise D2UserError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but no CUDA device is available: add MODEL.DEVICE cpu")
    if args.num_gpus > 1 and args.num_gpus > torch.cuda.device_count():
        raise D2UserError(f"--num-gpus {args.num_gpus} but {torch.cuda.device_count()} CUDA device(s) are available")
    weights = cfg.MODEL.WEIGHTS
    if args.eval_only and (not weights or ("://" not in weights and not os.path.isfile(weights))):
        raise D2UserError(f"--eval-only evaluates MODEL.WEIGHTS, but {weights or 'none is given'}"
                          f"{' was not found' if weights else ''}: add MODEL.WEIGHTS OUTPUT_DIR/model_final.pth")
    return cfg
