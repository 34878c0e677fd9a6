"""Optimizers and schedules shared by classification and detection.

build_param_groups: weight decay off for norm layers and biases when asked (a common modern choice; the paper
decays everything). make_lr_lambda: warm-up (constant or linear) then step (x gamma at each step) or cosine,
expressed in iterations; wrap it in torch.optim.lr_scheduler.LambdaLR.
"""
import math
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

from ..config.common import SolverConfig

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
SCHEDULES = ("step", "cosine", "constant")
WARMUP_METHODS = ("constant", "linear")


def build_param_groups(model: nn.Module, *, weight_decay: float, norm_bias_decay: bool = True) -> List[Dict]:
    """Trainable parameters in two groups: decayed, and (norm weights/biases + all biases) with weight_decay 0.

    norm_bias_decay=True puts everything in the decayed group (the paper's setting).
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if not norm_bias_decay and (isinstance(module, NORM_TYPES) or name == "bias" or param.ndim <= 1):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, *, name: str = "sgd", lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
    nesterov: bool = False, norm_bias_decay: bool = True,
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over build_param_groups(model)."""
    groups = build_param_groups(model, weight_decay=weight_decay, norm_bias_decay=norm_bias_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


def build_optimizer_for(model: nn.Module, solver: SolverConfig, *, lr: float) -> torch.optim.Optimizer:
    """build_optimizer from a solver section of either config (classification or detection); `lr` is the
    caller's (usually solver.scaled_lr())."""
    return build_optimizer(model, lr=lr, **solver.optimizer_kwargs())


def make_lr_lambda(
    *, max_iter: int, policy: str = "step", steps: Sequence[int] = (), gamma: float = 0.1, warmup_iters: int = 0,
    warmup_factor: float = 0.001, warmup_method: str = "linear", min_lr_factor: float = 0.0,
) -> Callable[[int], float]:
    """iteration -> multiplier of the base lr.

    step: gamma ** (number of steps <= iteration); cosine: min + (1 - min) * (1 + cos(pi * it / max_iter)) / 2;
    warm-up for iteration < warmup_iters: "constant" multiplies by warmup_factor (the paper's ResNet-110 lr 0.01
    phase), "linear" ramps warmup_factor -> 1 (Goyal et al. 2017).
    """
    if policy not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {policy!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_method not in WARMUP_METHODS:
        raise ValueError(f"unknown warm-up method {warmup_method!r}; choose one of {', '.join(WARMUP_METHODS)}")
    if list(steps) != sorted(steps):
        raise ValueError(f"lr steps must be increasing, got {list(steps)}")
    max_iter = max(1, int(max_iter))
    steps = tuple(int(s) for s in steps)

    def lr_lambda(iteration: int) -> float:
        if policy == "step":
            factor = gamma ** sum(1 for s in steps if iteration >= s)
        elif policy == "cosine":
            progress = min(iteration, max_iter) / max_iter
            factor = min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0
        if iteration < warmup_iters:
            if warmup_method == "constant":
                factor *= warmup_factor
            else:
                alpha = iteration / warmup_iters
                factor *= warmup_factor * (1.0 - alpha) + alpha
        return factor

    return lr_lambda


def build_scheduler(optimizer: torch.optim.Optimizer, **schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over make_lr_lambda(**schedule), stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(**schedule))


def weight_penalty(model: nn.Module, *, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """l1 * sum|w| + l2/2 * sum w^2 over multi-dimensional weights (conv/linear kernels), added to the loss."""
    params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    total = params[0].new_zeros(()) if params else torch.zeros(())
    for p in params:
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + 0.5 * l2 * p.pow(2).sum()
    return total


def schedule_in_iters(solver, iters_per_epoch: int) -> Dict:
    """build_scheduler's arguments for a classification solver section, every length in iterations: max_iter
    (solver.max_iter, else solver.epochs x iters_per_epoch), steps and warm-up converted from solver.unit /
    solver.warmup_unit ("epoch", "iter" or "fraction" of the run)."""
    s, ipe = solver, iters_per_epoch
    total = s.max_iter if s.max_iter else s.epochs * ipe
    to_iter = {"epoch": lambda v: int(round(v * ipe)), "iter": lambda v: int(round(v)),
               "fraction": lambda v: int(round(v * total))}
    return dict(max_iter=total, policy=s.schedule, steps=[to_iter[s.unit](v) for v in s.steps], gamma=s.gamma,
                warmup_iters=to_iter[s.warmup_unit](s.warmup), warmup_factor=s.warmup_factor,
                warmup_method=s.warmup_method, min_lr_factor=s.min_lr_factor)
