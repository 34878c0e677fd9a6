"""What the `solver:` sections of classification (config/cls.py) and detection training
(config/det.py) share: the optimizer settings, the shared option types, and the contract below.

Both SolverConfig dataclasses subclass SolverSettings. It is deliberately a plain mixin and not a dataclass base:
a dataclass base would put its fields first in every subclass, and the field order of a section is visible to
users - it is the key order of the config.yaml written into each run's output folder (and of the runs committed
under projects/*/runs/) and the order of "valid keys here: ..." in an unknown-key error. So each section still
declares its fields, in its own order; SHARED_FIELDS names the ones that must keep one type on both sides
(tests/test_solver_config.py checks that), and SHARED_DEFAULT_EXCEPTIONS the ones whose defaults differ on purpose.

What stays per side, because it differs in name, type or meaning:
    classification: base_lr scaled by batch_size / reference_batch_size, epochs / max_iter (Optional) / unit,
        steps (floats, in `unit`), warmup (float, in warmup_unit), min_lr_factor.
    detection: base_lr (unscaled), max_iter (int, iterations), steps (ints, iterations), warmup (int, iterations).
"""
from typing import Any, Dict, Literal

OptimizerName = Literal["sgd", "adamw"]

# Fields both solver sections declare with the same name and type.
SHARED_FIELDS = ("optimizer", "batch_size", "base_lr", "momentum", "nesterov", "weight_decay", "norm_bias_decay",
                 "schedule", "gamma", "warmup_method", "warmup_factor", "clip_grad_norm")
# Of those, the ones whose default differs between the sections: name -> (classification, detection).
SHARED_DEFAULT_EXCEPTIONS = {"batch_size": (128, 16), "base_lr": (0.1, 0.02), "schedule": ("cosine", "step"),
                             "warmup_factor": (0.1, 0.001)}


class SolverSettings:
    """Mixin of both SolverConfig dataclasses (see the module docstring for why it holds no fields)."""

    optimizer: OptimizerName
    momentum: float
    nesterov: bool
    weight_decay: float
    norm_bias_decay: bool

    def optimizer_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of engine.optim.build_optimizer, all but lr (each section derives lr its own way)."""
        return dict(name=self.optimizer, momentum=self.momentum, weight_decay=self.weight_decay,
                    nesterov=self.nesterov, norm_bias_decay=self.norm_bias_decay)
