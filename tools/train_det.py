#!/usr/bin/env python
"""Train and evaluate a Faster / Mask R-CNN (our backbone + FPN, torchvision heads) on COCO-format data.

    python tools/train_det.py --config configs/quickstart.yaml                 # embedded shapes, minutes on CPU
    torchrun --nproc_per_node=8 tools/train_det.py --config configs/mrcnn_r50.yaml --weights r50.safetensors
    python tools/train_det.py --config C --resume [CKPT]          # continue from OUTPUT/checkpoints/last.pt (or CKPT)
    python tools/train_det.py --config C --overwrite                            # replace the run in OUTPUT
    python tools/train_det.py --config C --eval-only --weights X.pt             # -> X.eval.json beside X.pt
    python tools/train_det.py --config C solver.max_iter=200 solver.base_lr=0.01   # any config key=value

--weights: backbone weights for training (model.backbone.weights): torchvision:<ENUM> (e.g. torchvision:IMAGENET1K_V1,
from torchvision's cache in $TORCH_HOME, downloaded unless RESBACKBONES_OFFLINE=1) or a file (tools/train_cls.py
--export or checkpoint, ours, torchvision .pth, detectron2 .pkl) whose metadata sets the input normalisation; with
--eval-only: a checkpoint of this tool (default: the one --resume would take), whose model is rebuilt from the config
it records and whose AP goes only to CHECKPOINT.eval.json beside it.
Writes OUTPUT/{config.yaml, checkpoints/last.pt, metrics.csv, metrics.jsonl, tensorboard/, curves.png, eval.json}
(COCO AP as a fraction, 0-1; eval.json also holds AP and AP50 per category, also printed at the end), the detections
the final evaluation scored (OUTPUT/inference/coco_instances_results.json, detectron2's name) and, with
train.eval_period > 0, OUTPUT/checkpoints/best.pt: the best AP of the first evaluated iou type (bbox unless
test.iou_types says otherwise). --resume: train_cls's rule (engine.checkpoint.find_resume_checkpoint; an older run's
OUTPUT/last.pt too). A new run refuses a non-empty OUTPUT (continue with --resume, replace with --overwrite).
Exit codes: 0 ok, 2 user error (one line on stderr), 3 training diverged (NaN/inf loss or gradients), 130 interrupted.
"""
import sys
from pathlib import Path

from _cli import default_argument_parser, default_setup, run

from resbackbones.config.det import DetTrainConfig
from resbackbones.io.output_paths import refuse_inputs


def parse_args(argv=None):
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    parser = default_argument_parser(__doc__, task="det", config_default=str(quickstart))
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before or after flags


def build_config(args) -> DetTrainConfig:
    flags = {"output": "train.output_dir", "device": "train.device"}
    if not args.eval_only:  # with --eval-only, --weights is the checkpoint to evaluate, not backbone weights
        flags["weights"] = "model.backbone.weights"
    return default_setup(DetTrainConfig, args, flags)


def main(argv=None) -> int:
    return run(lambda: _run(parse_args(argv)), interrupt_hint="interrupted; continue with --resume")


def _run(args) -> int:
    refuse_inputs({}, {"--config": args.config, "--weights": args.weights})  # the output rule: never written over
    cfg = build_config(args)
    trainer, result, report = _evaluate(args, cfg) if args.eval_only else _train(args, cfg)
    if trainer.dist.is_main:  # COCO AP as a fraction (0-1), the unit of eval.json and of every AP this package prints
        from resbackbones.engine.det_reports import final_report

        tables = final_report(result, trainer.iou_types)
        parts = [f"{t} AP {result[t]['AP']:.3f}" for t in trainer.iou_types if t in result]
        print((tables + "\n" if tables else "") + f"iteration {trainer.iter}, train {trainer.train_seconds:.0f} "
              f"s: " + ", ".join(parts) + f"  (COCO AP, 0-1; {report})")
    return 0


def _evaluate(args, cfg):
    from resbackbones.engine.checkpoint import CheckpointError, find_resume_checkpoint
    from resbackbones.engine.det_trainer import DetTrainer
    from resbackbones.engine.outputs import write_json_atomic

    checkpoint = Path(args.weights) if args.weights else find_resume_checkpoint(cfg.train.output_dir, True)[0]
    if checkpoint is None:
        raise CheckpointError(f"--eval-only: no checkpoint in {cfg.train.output_dir}; give --weights CKPT")
    trainer = DetTrainer(cfg, eval_only=True, checkpoint=str(checkpoint))
    if trainer.dist.is_main:
        print(f"evaluating {checkpoint} at amp {trainer.eval_amp} ({trainer.eval_amp_reason})", flush=True)
    result = trainer.evaluate()
    report = checkpoint.with_name(checkpoint.stem + ".eval.json")  # beside it: the run's own files stay
    if trainer.dist.is_main:
        write_json_atomic(report, dict(result, checkpoint=str(checkpoint)))
    return trainer, result, report


def _train(args, cfg):
    from resbackbones.detection.backbone_weights import refuse_untrainable_backbone
    from resbackbones.engine.det_trainer import RUN_FILES, DetTrainer
    from resbackbones.engine.outputs import claimed_run_dir

    refuse_untrainable_backbone(cfg.model)  # a config mistake: refused before the output folder is touched
    with claimed_run_dir(cfg.train.output_dir, resume=args.resume, overwrite=args.overwrite, run_files=RUN_FILES):
        trainer = DetTrainer(cfg, resume=args.resume)
        if trainer.dist.is_main and trainer.train_set is not None:
            t = trainer.model.transform  # its normalisation: the backbone weights' unless model.input sets it
            print(f"{trainer.train_set.describe()}\namp: {trainer.amp} ({trainer.amp_reason})\nbackbone weights: "
                  f"{cfg.model.backbone.weights or 'none (random init)'}; input {t.input_format}, mean "
                  f"{[round(v, 4) for v in t.image_mean]}, std {[round(v, 4) for v in t.image_std]}", flush=True)
        return trainer, trainer.fit(), Path(cfg.train.output_dir) / "eval.json"


if __name__ == "__main__":
    sys.exit(main())
