"""Training engine shared by classification and detection: run setup (setup.py), the loop core and its hooks
(loop.py, hooks.py), device/AMP, DDP, optimizers and schedules, EMA, atomic checkpoints, metrics logging.
cls_trainer.py and det_trainer.py are the two tasks on the loop core."""
from ..utils.amp import autocast, grad_scaler, resolve_device, set_deterministic
from ..utils.comm import DistInfo, all_reduce_sums, barrier, convert_sync_bn, init_distributed, unwrap
from .checkpoint import (CheckpointError, CheckpointManager, Checkpointer, find_last_checkpoint, load_checkpoint,
                         save_atomic)
from .ema import ModelEMA
from .metrics_log import MetricsLogger, plot_error_curves
from .optim import build_optimizer, build_param_groups, build_scheduler, make_lr_lambda, weight_penalty

__all__ = [
    "CheckpointError", "CheckpointManager", "Checkpointer", "DistInfo", "MetricsLogger", "ModelEMA",
    "all_reduce_sums", "autocast", "barrier", "build_optimizer", "build_param_groups", "build_scheduler",
    "convert_sync_bn", "find_last_checkpoint", "grad_scaler", "init_distributed", "load_checkpoint",
    "make_lr_lambda", "plot_error_curves", "resolve_device", "save_atomic", "set_deterministic", "unwrap",
    "weight_penalty",
]
