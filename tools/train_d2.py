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
tools/eval_coco.py scores too. --num-gpus/--num-machines/--dist-url launch DDP as in detectron2. On a machine
without CUDA add MODEL.DEVICE cpu. The command line is checked before anything starts (config file, override keys
and types, jsons and image folders, device, --eval-only weights): exit 2 with one line naming what is wrong;
Ctrl-C exits 130.
"""
import os
import sys
import warnings
import weakref

from _cli import run

# detectron2 scripts a few functions at import: torch's deprecation notice for that is not the user's to act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402

from resbackbones.integrations.detectron2 import ResBackbonesCheckpointer, apply_weights_conventions  # noqa: E402
from resbackbones.integrations.detectron2_data import register_datasets  # noqa: E402
from resbackbones.integrations.detectron2_train import build_cfg  # noqa: E402


class Trainer(DefaultTrainer):
    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain DetectionCheckpointer; ours loads through the library's reader and
        # writes atomically. Replaced here, before the PeriodicCheckpointer hook captures it.
        self.checkpointer = ResBackbonesCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def setup(args):
    cfg = build_cfg(args)
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
        ResBackbonesCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
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


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    print("[train_d2] command line:", args)

    def body() -> int:
        apply_weights_conventions(build_cfg(args))  # every user error before a process or a file is made
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
        return 0

    return run(body, interrupt_hint="interrupted; continue with --resume (OUTPUT_DIR/last_checkpoint)")


if __name__ == "__main__":
    sys.exit(cli())
