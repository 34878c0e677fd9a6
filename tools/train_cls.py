#!/usr/bin/env python
"""Train / evaluate / export an image classifier (ImageNet-style pretraining of a backbone).

    python tools/train_cls.py                                   # embedded synthetic shapes, a few CPU minutes
    python tools/train_cls.py --config configs/cls/cifar_resnet20.yaml --data ../shared/data/cifar10
    torchrun --nproc_per_node=8 tools/train_cls.py --config configs/cls/imagenet_resnet50.yaml --data /imagenet
    python tools/train_cls.py --config C --resume                        # continue from OUTPUT/checkpoints/last.pt
    python tools/train_cls.py --config C --overwrite                     # replace the run in OUTPUT
    python tools/train_cls.py --config C --eval-only --weights W.pt      # top-1 / top-5 on the val split
    python tools/train_cls.py ... --export backbone.safetensors          # backbone-only weights for detection
    python tools/train_cls.py --weights OUTPUT/checkpoints/best.pt --export bb.safetensors   # export, no training
    python tools/train_cls.py ... solver.base_lr=0.05 solver.steps=[30,60]  # any config key=value

A new run refuses an output folder that is not empty (continue it with --resume, or replace it with --overwrite), and
a second process writing into the same folder is refused while the first runs. --eval-only writes nothing there.
--weights CKPT --export F with a train_cls checkpoint (and no --config) trains nothing: it writes what the run's own
--export would have (its config's metadata, the top-1 re-measured on its val split; --data DIR if the data moved).
Exit codes: 0 ok, 2 user error (config, data, weights: one line on stderr), 3 training diverged (NaN/inf loss or
gradients), 130 interrupted.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resbackbones.config import ConfigError, load_config  # noqa: E402
from resbackbones.config.cls import ClsConfig  # noqa: E402
from resbackbones.data.errors import DataError  # noqa: E402
from resbackbones.engine.checkpoint import CheckpointError  # noqa: E402
from resbackbones.engine.tool_errors import run_tool  # noqa: E402
from resbackbones.weights.errors import WeightsError  # noqa: E402

USER_ERRORS = (ConfigError, DataError, CheckpointError, WeightsError)  # exit 2, like any ValueError (run_tool)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (configs/cls/*.yaml); default: the built-in synthetic run")
    parser.add_argument("--arch", help="classifier name from rb.list_backbones() (model.backbone.name)")
    parser.add_argument("--data", help="DIR with train/ and val/ or test/ (folders or .tar) (data.root)")
    parser.add_argument("--output", help="output DIR (train.output_dir)")
    parser.add_argument("--epochs", type=int, help="training length in epochs (solver.epochs; replaces max_iter)")
    parser.add_argument("--batch-size", type=int, help="global batch size (solver.batch_size)")
    parser.add_argument("--lr", type=float, help="learning rate at this batch size (no linear scaling)")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process (data.num_workers)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="resume from CKPT, or from OUTPUT/checkpoints/last.pt when no path is given")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in a non-empty output folder (deletes its checkpoints, metrics, config)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --weights on the val split")
    parser.add_argument("--weights", help="initial weights: a file (ours, a checkpoint, torchvision .pth, detectron2 "
                        ".pkl) or torchvision:<ENUM>; the head loads where its shape fits")
    parser.add_argument("--export", metavar="FILE", help="write backbone-only weights of the final model to FILE")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.05")
    # Intermixed: key=value overrides may come before, between or after the flags.
    return parser.parse_intermixed_args(argv)


def build_config(args: argparse.Namespace) -> ClsConfig:
    flags = []
    for flag, key in (("arch", "model.backbone.name"), ("data", "data.root"), ("output", "train.output_dir"),
                      ("batch_size", "solver.batch_size"), ("workers", "data.num_workers"), ("device", "train.device"),
                      ("weights", "model.backbone.weights")):
        value = getattr(args, flag)
        if value is not None:
            flags.append((key, value))
    # Flags first, then positional key=value (which win). Flag values are strings from the shell: pass them
    # through the same override parser as text so types are checked the same way.
    overrides = [f"{k}={_quote(v)}" for k, v in flags] + list(args.overrides)
    cfg = load_config(ClsConfig, args.config, overrides)
    if args.lr is not None:
        if not 0 < args.lr < float("inf"):  # the flag bypasses the config's RANGES: same rule as solver.base_lr
            raise ConfigError(f"--lr must be > 0, got {args.lr}")
        cfg.solver.base_lr = float(args.lr)
        cfg.solver.reference_batch_size = 0  # an explicit --lr is the lr actually used
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
        solver = cfg.solver
        if solver.max_iter and solver.unit == "iter":
            # An iteration recipe (e.g. CIFAR 64k it, /10 at 32k and 48k) keeps its shape at the new length.
            solver.steps = tuple(s / solver.max_iter for s in solver.steps)
            solver.unit = "fraction"
        solver.max_iter = None
        solver.epochs = args.epochs
    return cfg


def _quote(value) -> str:
    text = str(value)
    # Paths and names must stay strings even if they look like numbers/booleans to YAML.
    return "'" + text.replace("'", "''") + "'" if isinstance(value, str) else text


def main(argv=None) -> int:
    args = parse_args(argv)
    # Exit codes and "error: ..." lines come from run_tool, shared with tools/train_det.py.
    return run_tool(lambda: _run(args), interrupt_hint="interrupted; resume with --resume", user_errors=USER_ERRORS)


def _run(args: argparse.Namespace) -> int:
    from resbackbones.engine.cls_export import export_checkpoint, is_train_cls_checkpoint
    from resbackbones.engine.outputs import refuse_inputs

    if (args.export and args.weights and not args.resume and (args.config is None or args.eval_only)
            and is_train_cls_checkpoint(args.weights)):
        refuse_inputs({"--export": args.export}, {"--weights": args.weights})
        return _export_checkpoint(args, export_checkpoint)
    cfg = build_config(args)
    if args.eval_only and not (args.weights or args.resume):
        raise ConfigError("--eval-only needs --weights FILE (or --resume to evaluate the last checkpoint)")
    from resbackbones.engine.cls_trainer import RUN_FILES, ClsTrainer
    from resbackbones.engine.outputs import claim_run_dir

    output = Path(cfg.train.output_dir)
    if args.export:  # never over the weights or checkpoints it is made from
        resume_file = args.resume if isinstance(args.resume, str) else None
        refuse_inputs({"--export": args.export}, {"--weights": args.weights, "--resume": resume_file,
                                                   "last.pt": output / "checkpoints" / "last.pt",
                                                   "best.pt": output / "checkpoints" / "best.pt"})
    lock = None if args.eval_only else claim_run_dir(output, resume=bool(args.resume), overwrite=args.overwrite,
                                                     run_files=RUN_FILES)
    try:  # released on an error too (the process may go on: main() called in-process)
        trainer = ClsTrainer(cfg, resume=args.resume, build_train=not args.eval_only or bool(args.resume),
                             write_run_files=not args.eval_only)
        if args.eval_only:
            metrics = trainer.evaluate()
            if trainer.is_main:
                print(f"top-1 {metrics['val_top1']:.2f} %  top-5 {metrics['val_top5']:.2f} %  "
                      f"loss {metrics['val_loss']:.4f}  ({metrics['val_count']} images, "
                      f"{cfg.model.backbone.name}, {args.weights or 'last checkpoint'})")
        else:
            metrics = trainer.fit()
            if args.export and not metrics:  # resumed an already finished run: measure what the export records
                metrics = trainer.evaluate()
        if args.export and trainer.is_main:
            print(f"exported backbone weights to {trainer.export_backbone(args.export, metrics=metrics)}")
    finally:
        if lock is not None:
            lock.release()
    return 0


def _export_checkpoint(args: argparse.Namespace, export_checkpoint) -> int:
    """--weights CKPT --export F: the checkpoint's own config; flags that would change the run are refused."""
    for flag in ("config", "arch", "output", "epochs", "lr", "overwrite"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--{flag} does not apply to --weights CKPT --export F, which exports the checkpoint "
                              f"as trained (its recorded config): drop --{flag} (--data DIR if the data moved)")
    flags = [f"{key}={_quote(getattr(args, flag))}" for flag, key in (
        ("data", "data.root"), ("batch_size", "solver.batch_size"), ("workers", "data.num_workers"),
        ("device", "train.device")) if getattr(args, flag) is not None]
    path, metrics = export_checkpoint(args.weights, args.export, overrides=flags + list(args.overrides))
    print(f"exported backbone weights of {args.weights} to {path} (val top-1 {metrics['val_top1']:.2f} %, "
          f"top-5 {metrics['val_top5']:.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
