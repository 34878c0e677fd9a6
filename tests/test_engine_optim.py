"""Schedules, parameter groups and penalties of resbackbones.engine.optim."""
import math

import pytest
import torch
from torch import nn

from resbackbones.engine.optim import build_optimizer, build_param_groups, build_scheduler, make_lr_lambda, weight_penalty


def test_paper_cifar_step_schedule_in_iterations():
    f = make_lr_lambda(max_iter=64000, policy="step", steps=(32000, 48000), gamma=0.1)
    assert [f(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_resnet110_constant_warmup():
    f = make_lr_lambda(max_iter=64000, policy="step", steps=(32000, 48000), warmup_iters=400,
                       warmup_factor=0.1, warmup_method="constant")
    assert f(0) == pytest.approx(0.1) and f(399) == pytest.approx(0.1) and f(400) == 1.0


def test_linear_warmup_and_cosine():
    f = make_lr_lambda(max_iter=100, policy="cosine", warmup_iters=10, warmup_factor=0.0, warmup_method="linear")
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_bad_schedule_names_choices():
    with pytest.raises(ValueError, match="step, cosine, constant"):
        make_lr_lambda(max_iter=10, policy="poly")
    with pytest.raises(ValueError, match="increasing"):
        make_lr_lambda(max_iter=10, steps=(8, 4))


def test_scheduler_drives_optimizer_lr():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1)
    sched = build_scheduler(opt, max_iter=10, policy="step", steps=(3,), gamma=0.1)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])


def test_no_weight_decay_on_norm_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = build_param_groups(model, weight_decay=1e-4, norm_bias_decay=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 3  # bn weight, bn bias, fc bias
    everything = build_param_groups(model, weight_decay=1e-4, norm_bias_decay=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 5


def test_weight_penalty_values():
    model = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    assert weight_penalty(model, l1=0.5).item() == pytest.approx(1.5)
    assert weight_penalty(model, l2=2.0).item() == pytest.approx(5.0)  # l2/2 * (1 + 4)
