#!/usr/bin/env python
"""Train and evaluate a Faster / Mask R-CNN (our backbone + FPN, torchvision heads) on COCO-format data.

    python tools/train_det.py --config configs/quickstart.yaml                 # embedded shapes, minutes on CPU
    torchrun --nproc_per_node=8 tools/train_det.py --config configs/mrcnn_r50.yaml --weights r50.safetensors
    python tools/train_det.py --config C --resume                               # continue from OUTPUT/last.pt
    python tools/train_det.py --config C --overwrite                            # replace the run in OUTPUT
    python tools/train_det.py --config C --eval-only --weights OUTPUT/last.pt   # -> OUTPUT/last.eval.json
    python tools/train_det.py --config C solver.max_iter=200 solver.base_lr=0.01   # any config key=value

--weights: backbone weights for training (model.backbone.weights): torchvision:<ENUM> (e.g. torchvision:IMAGENET1K_V1,
from torchvision's cache in $TORCH_HOME, downloaded unless RESBACKBONES_OFFLINE=1) or a file (tools/train_cls.py
--export or checkpoint, ours, torchvision .pth, detectron2 .pkl); their metadata sets the input normalisation.
With --eval-only: a checkpoint of this tool.
Writes OUTPUT/{config.yaml, last.pt, metrics.csv, metrics.jsonl, tensorboard/, curves.png, eval.json} (COCO AP as a
fraction, 0-1; eval.json also holds AP and AP50 per category, also printed at the end), the detections the final
evaluation scored (OUTPUT/inference/coco_instances_results.json, detectron2's name) and, with train.eval_period > 0,
OUTPUT/best.pt: the checkpoint of the best AP of the first evaluated iou type (bbox unless test.iou_types says
otherwise; named in the log line and in the checkpoint's best_metric_name). --resume prints "resumed from
OUTPUT/last.pt: iteration N". A new run refuses a non-empty OUTPUT (continue with --resume, replace with
--overwrite) and a second writer while one runs. --eval-only writes only CHECKPOINT.eval.json beside the checkpoint
(e.g. OUTPUT/last.eval.json).
Exit codes: 0 ok, 2 user error (one line on stderr), 3 training diverged (NaN/inf loss or gradients).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resbackbones.config import ConfigError, load_config  # noqa: E402
from resbackbones.config.det import DetTrainConfig  # noqa: E402
from resbackbones.data.errors import DataError  # noqa: E402
from resbackbones.engine.checkpoint import CheckpointError  # noqa: E402
from resbackbones.engine.tool_errors import run_tool  # noqa: E402
from resbackbones.evaluation.coco import CocoEvalError  # noqa: E402
from resbackbones.weights.errors import WeightsError  # noqa: E402

# Exit 2 with one line (as any ValueError, see run_tool).
USER_ERRORS = (ConfigError, DataError, CheckpointError, WeightsError, CocoEvalError, FileNotFoundError)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"),
                        help="YAML config (configs/*.yaml); default: configs/quickstart.yaml")
    parser.add_argument("--output", help="output DIR (train.output_dir)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt if it exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in a non-empty output folder (deletes its last.pt, best.pt, metrics, "
                             "eval.json, inference/)")
    parser.add_argument("--weights", help="backbone weights to start from; with --eval-only: a checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights (or OUTPUT/last.pt) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=200")
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before or after flags


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"  # paths stay strings even if YAML would read a number


def build_config(args: argparse.Namespace) -> DetTrainConfig:
    flags = []
    if args.output:
        flags.append(f"train.output_dir={_quote(args.output)}")
    if args.device:
        flags.append(f"train.device={_quote(args.device)}")
    if args.weights and not args.eval_only:
        flags.append(f"model.backbone.weights={_quote(args.weights)}")
    return load_config(DetTrainConfig, args.config, flags + list(args.overrides))


def main(argv=None) -> int:
    args = parse_args(argv)
    # Exit codes and "error: ..." lines come from run_tool, shared with tools/train_cls.py.
    return run_tool(lambda: _run(args), interrupt_hint="interrupted; continue with --resume", user_errors=USER_ERRORS)


def _run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from resbackbones.detection.backbone_weights import refuse_untrainable_backbone
    from resbackbones.engine.det_trainer import RUN_FILES, DetTrainer
    from resbackbones.engine.outputs import claim_run_dir, write_json_atomic

    lock = None
    if args.eval_only:
        checkpoint = Path(args.weights or Path(cfg.train.output_dir) / "last.pt")
        report = checkpoint.with_name(checkpoint.stem + ".eval.json")  # beside it: the run's own files stay
        trainer = DetTrainer(cfg, eval_only=True, checkpoint=str(checkpoint))
        if trainer.dist.is_main:
            print(f"evaluating {checkpoint} at amp {trainer.eval_amp} ({trainer.eval_amp_reason})", flush=True)
        result = trainer.evaluate()
        if trainer.dist.is_main:
            write_json_atomic(report, dict(result, checkpoint=str(checkpoint)))
    else:
        report = Path(cfg.train.output_dir) / "eval.json"
        refuse_untrainable_backbone(cfg.model)  # a config mistake: refused before the output folder is touched
        lock = claim_run_dir(cfg.train.output_dir, resume=args.resume, overwrite=args.overwrite, run_files=RUN_FILES)
        try:  # released on an error too (the process may go on: main() called in-process)
            trainer = DetTrainer(cfg, resume=args.resume)
            if trainer.dist.is_main and trainer.train_set is not None:
                print(trainer.train_set.describe())
                print(f"amp: {trainer.amp} ({trainer.amp_reason})", flush=True)
                t = trainer.model.transform  # its normalisation: the backbone weights' unless model.input sets it
                print(f"backbone weights: {cfg.model.backbone.weights or 'none (random init)'}; input "
                      f"{t.input_format}, mean {[round(v, 4) for v in t.image_mean]}, "
                      f"std {[round(v, 4) for v in t.image_std]}", flush=True)
            result = trainer.fit()
        finally:
            if lock is not None:
                lock.release()
    if trainer.dist.is_main:
        _print_result(result, trainer, report)
    return 0


def _print_result(result, trainer, report: Path) -> None:
    # COCO AP as a fraction (0-1), the unit of eval.json and of every AP this package prints.
    from resbackbones.engine.det_reports import final_report

    tables = final_report(result, trainer.iou_types)
    if tables:
        print(tables)
    parts = [f"{t} AP {result[t]['AP']:.3f}" for t in trainer.iou_types if t in result]
    print(f"iteration {trainer.iteration}, train {trainer.train_seconds:.0f} s: " + ", ".join(parts)
          + f"  (COCO AP, 0-1; {report})")


if __name__ == "__main__":
    sys.exit(main())
