"""What tools/train_cls.py does with a built config: train (or resume), or only evaluate, then optionally export.

    metrics = run_classification(cfg, resume=False, eval_only=False, weights=None, export="bb.safetensors",
                                 overwrite=False)

Here rather than in the tool so that the tool only parses its command line (issue 15: thin tools), and so that a
notebook can run exactly what the command runs.
"""
import contextlib
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..config import ConfigError
from ..config.cls import ClsConfig
from ..io.outputs import check_new_output
from .outputs import claimed_run_dir, refuse_inputs


def accuracy_line(metrics: Dict[str, Any]) -> str:
    """'top-1 X %  top-5 Y %  loss Z  (N images' of an evaluation's metrics (val_top1 / val_top5 in percent)."""
    return (f"top-1 {metrics['val_top1']:.2f} %  top-5 {metrics['val_top5']:.2f} %  loss {metrics['val_loss']:.4f}  "
            f"({metrics['val_count']} images")


def run_classification(cfg: ClsConfig, *, resume: Union[bool, str], eval_only: bool, weights: Optional[str],
                       export: Optional[str], overwrite: bool) -> Dict[str, Any]:
    """Train cfg in cfg.train.output_dir (resume: True = OUTPUT/checkpoints/last.pt, or a checkpoint path), or with
    eval_only evaluate `weights` (or the last checkpoint with resume) and write nothing in the run folder; export:
    backbone-only weights of the final model to that file. Returns the last evaluation's metrics."""
    if eval_only and not (weights or resume):
        raise ConfigError("--eval-only needs --weights FILE (or --resume to evaluate the last checkpoint)")
    from .cls_trainer import RUN_FILES, ClsTrainer  # the trainer imports torch's data stack: only when running

    checkpoints = Path(cfg.train.output_dir) / "checkpoints"
    # The inputs registered (the output rule: nothing this command writes or --overwrite deletes may be one).
    refuse_inputs({}, {"--weights": weights, "--resume": resume if isinstance(resume, str) else None})
    if export:  # never over the checkpoints it is made from, an existing file or another run's: before training
        refuse_inputs({"--export": export}, {"last.pt": checkpoints / "last.pt", "best.pt": checkpoints / "best.pt"},
                      register=False)  # not read (--overwrite may delete them); the run writes them
        check_new_output(export, "--export", overwrite=overwrite)
    with (contextlib.nullcontext() if eval_only else claimed_run_dir(  # --eval-only writes nothing there
            cfg.train.output_dir, resume=bool(resume), overwrite=overwrite, run_files=RUN_FILES)):
        trainer = ClsTrainer(cfg, resume=resume, build_train=not eval_only or bool(resume),
                             write_run_files=not eval_only)
        metrics = trainer.evaluate() if eval_only else trainer.fit()
        if eval_only and trainer.is_main:
            print(f"{accuracy_line(metrics)}, {cfg.model.backbone.name}, {weights or 'last checkpoint'})")
        if export and not metrics:  # resumed an already finished run: measure what the export records
            metrics = trainer.evaluate()
        if export and trainer.is_main:
            print(f"exported backbone weights to {trainer.export_backbone(export, metrics=metrics)}")
    return metrics
