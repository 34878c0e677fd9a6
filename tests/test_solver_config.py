"""The solver sections of classification and detection training share engine/solver_config.py: the shared
fields keep one type on both sides (and one default, except the listed exceptions), and optim builds the same
optimizer from either section."""
import dataclasses
import typing

import torch
from torch import nn

from resbackbones.config.cls import SolverConfig as ClsSolver
from resbackbones.config.det import SolverConfig as DetSolver
from resbackbones.engine.optim import build_optimizer, build_optimizer_for
from resbackbones.engine.solver_config import SHARED_DEFAULT_EXCEPTIONS, SHARED_FIELDS, SolverSettings


def test_shared_fields_have_one_type_and_default():
    cls_fields = {f.name: f for f in dataclasses.fields(ClsSolver)}
    det_fields = {f.name: f for f in dataclasses.fields(DetSolver)}
    cls_hints, det_hints = typing.get_type_hints(ClsSolver), typing.get_type_hints(DetSolver)
    for name in SHARED_FIELDS:
        assert cls_hints[name] == det_hints[name], name
        defaults = (cls_fields[name].default, det_fields[name].default)
        assert defaults == SHARED_DEFAULT_EXCEPTIONS.get(name, (defaults[0],) * 2), name
    # The mixin only adds behaviour: each section keeps exactly its own fields, in its own order.
    assert [f.name for f in dataclasses.fields(ClsSolver)][:3] == ["optimizer", "batch_size", "base_lr"]
    assert [f.name for f in dataclasses.fields(DetSolver)][:3] == ["optimizer", "base_lr", "momentum"]


def test_optimizer_from_either_section():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    for solver in (ClsSolver(optimizer="sgd", nesterov=True, norm_bias_decay=False, weight_decay=5e-4),
                   DetSolver(momentum=0.8)):
        assert isinstance(solver, SolverSettings)
        opt = build_optimizer_for(model, solver, lr=0.05)
        ref = build_optimizer(model, name=solver.optimizer, lr=0.05, momentum=solver.momentum,
                              weight_decay=solver.weight_decay, nesterov=solver.nesterov,
                              norm_bias_decay=solver.norm_bias_decay)
        assert type(opt) is torch.optim.SGD
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
               [{k: v for k, v in g.items() if k != "params"} for g in ref.param_groups]
    assert type(build_optimizer_for(model, DetSolver(optimizer="adamw"), lr=1e-3)) is torch.optim.AdamW
