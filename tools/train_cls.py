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
--export F never replaces an existing F without --overwrite, an input, or a file of a run folder (its checkpoints,
config.yaml, metrics). --weights CKPT --export F with a train_cls checkpoint (and no --config) trains nothing: it writes what the run's own
--export would have (its config's metadata, the top-1 re-measured on its val split; --data DIR if the data moved).
Exit codes: 0 ok, 2 user error (one line on stderr), 3 training diverged (NaN/inf loss or gradients), 130 interrupted.
"""
import sys

from _cli import default_argument_parser, default_setup, flag_overrides, run

from resbackbones.config import ConfigError
from resbackbones.config.cls import ClsConfig, with_epochs
from resbackbones.engine.cls_export import export_checkpoint, is_train_cls_checkpoint
from resbackbones.engine.cls_run import run_classification
from resbackbones.io.output_paths import refuse_inputs
from resbackbones.io.outputs import check_new_output

FLAGS = {"arch": "model.backbone.name", "data": "data.root", "output": "train.output_dir",
         "batch_size": "solver.batch_size", "workers": "data.num_workers", "device": "train.device",
         "weights": "model.backbone.weights"}


def parse_args(argv=None):
    parser = default_argument_parser(__doc__, task="cls")
    parser.add_argument("--arch", help="classifier name from rb.list_backbones() (model.backbone.name)")
    parser.add_argument("--data", help="DIR with train/ and val/ or test/ (folders or .tar) (data.root)")
    parser.add_argument("--epochs", type=int, help="training length in epochs (solver.epochs; replaces max_iter)")
    parser.add_argument("--batch-size", type=int, help="global batch size (solver.batch_size)")
    parser.add_argument("--lr", type=float, help="learning rate at this batch size (no linear scaling)")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process (data.num_workers)")
    parser.add_argument("--export", metavar="FILE", help="write backbone-only weights of the final model to FILE")
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before, between or after the flags


def build_config(args) -> ClsConfig:
    if args.lr is not None and not 0 < args.lr < float("inf"):  # these flags bypass the config's RANGES: same rules
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = default_setup(ClsConfig, args, FLAGS)
    if args.lr is not None:  # an explicit --lr is the lr actually used (no linear scaling)
        cfg.solver.base_lr, cfg.solver.reference_batch_size = float(args.lr), 0
    return cfg if args.epochs is None else with_epochs(cfg, args.epochs)


def main(argv=None) -> int:
    return run(lambda: _run(parse_args(argv)), interrupt_hint="interrupted; resume with --resume")


def _run(args) -> int:
    refuse_inputs({}, {"--config": args.config})  # registered: no output of this command may replace it
    if (args.export and args.weights and not args.resume and (args.config is None or args.eval_only)
            and is_train_cls_checkpoint(args.weights)):
        return _export_checkpoint(args)
    run_classification(build_config(args), resume=args.resume, eval_only=args.eval_only, weights=args.weights,
                       export=args.export, overwrite=args.overwrite)
    return 0


def _export_checkpoint(args) -> int:
    """--weights CKPT --export F: the checkpoint's own config; flags that would change the run are refused."""
    refuse_inputs({"--export": args.export}, {"--weights": args.weights})
    check_new_output(args.export, "--export", overwrite=args.overwrite)  # --overwrite: replace F, nothing else
    for flag in ("config", "arch", "output", "epochs", "lr"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--{flag} does not apply to --weights CKPT --export F, which exports the checkpoint "
                              f"as trained (its recorded config): drop --{flag} (--data DIR if the data moved)")
    kept = {name: FLAGS[name] for name in ("data", "batch_size", "workers", "device")}  # all that applies here
    overrides = flag_overrides(args, kept) + list(args.overrides)
    path, metrics = export_checkpoint(args.weights, args.export, overrides=overrides)
    print(f"exported backbone weights of {args.weights} to {path} (val top-1 {metrics['val_top1']:.2f} %, "
          f"top-5 {metrics['val_top5']:.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
