"""One SolverConfig class (config/common.py) in both training schemas, each with its own defaults: a section of a
file keeps its task's defaults for the keys it leaves out; detection trains in iterations; optim builds the same
optimizer from either schema's section."""
import typing

import pytest
import torch
from torch import nn

from resbackbones.config import ConfigError, from_dict, load_config
from resbackbones.config.cls import ClsConfig
from resbackbones.config.common import SolverConfig
from resbackbones.config.det import DetTrainConfig
from resbackbones.engine.optim import build_optimizer, build_optimizer_for


def test_one_solver_class_with_task_defaults():
    assert typing.get_type_hints(ClsConfig)["solver"] is SolverConfig
    assert typing.get_type_hints(DetTrainConfig)["solver"] is SolverConfig
    assert ClsConfig().solver == SolverConfig()
    det = DetTrainConfig().solver
    assert (det.batch_size, det.base_lr, det.reference_batch_size, det.epochs, det.max_iter, det.unit,
            det.schedule, det.steps, det.warmup, det.warmup_factor) == (
        16, 0.02, 0, None, 90000, "iter", "step", (60000, 80000), 1000, 0.001)


def test_a_section_keeps_its_task_defaults_for_the_keys_it_leaves_out():
    det = from_dict(DetTrainConfig, {"solver": {"base_lr": 0.01}}).solver
    assert (det.base_lr, det.schedule, det.max_iter, det.epochs, det.warmup_factor) == (
        0.01, "step", 90000, None, 0.001)
    cls = from_dict(ClsConfig, {"solver": {"base_lr": 0.01}}).solver
    assert (cls.base_lr, cls.schedule, cls.epochs, cls.warmup_factor) == (0.01, "cosine", 8, 0.1)


@pytest.mark.parametrize("override, words", [
    ("solver.epochs=3", "detection trains in iterations"), ("solver.max_iter=null", "'solver.max_iter' is required"),
    ("solver.unit=epoch", "'solver.unit' must be 'iter'"), ("solver.warmup_unit=fraction", "'solver.warmup_unit'")])
def test_detection_solver_counts_iterations(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(DetTrainConfig, None, [override])


def test_scaled_lr():
    assert SolverConfig(base_lr=0.1, batch_size=256, reference_batch_size=128).scaled_lr() == pytest.approx(0.2)
    assert SolverConfig(base_lr=0.1, batch_size=256, reference_batch_size=0).scaled_lr() == 0.1


def test_optimizer_from_either_section():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    for solver in (from_dict(ClsConfig, {"solver": {"nesterov": True, "norm_bias_decay": False,
                                                    "weight_decay": 5e-4}}).solver,
                   from_dict(DetTrainConfig, {"solver": {"momentum": 0.8}}).solver):
        opt = build_optimizer_for(model, solver, lr=0.05)
        ref = build_optimizer(model, name=solver.optimizer, lr=0.05, momentum=solver.momentum,
                              weight_decay=solver.weight_decay, nesterov=solver.nesterov,
                              norm_bias_decay=solver.norm_bias_decay)
        assert type(opt) is torch.optim.SGD
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
               [{k: v for k, v in g.items() if k != "params"} for g in ref.param_groups]
    assert type(build_optimizer_for(model, SolverConfig(optimizer="adamw"), lr=1e-3)) is torch.optim.AdamW


def test_amp_choices_of_both_schemas_are_the_engines():
    from typing import get_args
    from resbackbones.config.common import AmpMode
    from resbackbones.utils.amp import AMP_MODES
    assert set(get_args(AmpMode)) == set(AMP_MODES)
