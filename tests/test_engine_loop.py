"""The loop core (engine/loop.py) on a toy regression task: hook order, the GradScaler branch with clipping on CPU,
a NaN loss or NaN weights on one DDP rank stopping every rank together (no hang), non-finite weights refused
before a save."""
import multiprocessing
import queue

import pytest
import torch
from torch import nn

from resbackbones.utils.comm import DistInfo
from resbackbones.engine.hooks import Periodic, TrainTimer
from resbackbones.engine.loop import HookBase, Trainer
from resbackbones.engine.setup import RunContext
from resbackbones.engine.tool_errors import TrainingDiverged


class ToyTrainer(Trainer):
    """y = w x + b on fixed random batches, SGD lr 0.1, constant schedule; poison_at: the step whose loss is NaN."""

    def __init__(self, *, rank=0, world_size=1, scaler=None, clip=0.0, poison_at=None):
        super().__init__(RunContext(device=torch.device("cpu"), amp="none", amp_reason="test",
                                    dist=DistInfo(rank=rank, world_size=world_size)))
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.train_model = nn.parallel.DistributedDataParallel(self.model) if world_size > 1 else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: 1.0)
        self.scaler, self.clip_grad_norm, self.poison_at = scaler, clip, poison_at
        self.checkpoint_path = "nowhere/last.pt"

    def forward(self, batch):
        out = self.train_model(batch[0])
        return out * float("nan") if self.iter == self.poison_at else out

    def losses(self, outputs, batch):
        return {"mse": ((outputs - batch[1]) ** 2).mean()}

    def state_dict(self):
        return {"model": self.model.state_dict(), "iteration": self.iter}


def batches():
    g = torch.Generator().manual_seed(1)
    while True:
        x = torch.randn(4, 3, generator=g)
        yield x, x.sum(1, keepdim=True) * 5.0


class Recorder(HookBase):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_train(self, trainer):
        self.log.append((self.name, "before_train", trainer.iter))

    def after_backward(self, trainer):
        self.log.append((self.name, "after_backward", trainer.iter))

    def after_step(self, trainer):
        self.log.append((self.name, "after_step", trainer.iter))

    def after_train(self, trainer):
        self.log.append((self.name, "after_train", trainer.iter))


def test_hooks_run_in_registration_order_around_each_step():
    log = []
    trainer = ToyTrainer()
    trainer.register_hooks([Recorder("a", log), None, Recorder("b", log)])
    trainer.train(batches(), max_iter=2)
    stages = [("before_train", 0), ("after_backward", 0), ("after_step", 1), ("after_backward", 1),
              ("after_step", 2), ("after_train", 2)]
    assert log == [(name, stage, it) for stage, it in stages for name in "ab"]


def test_a_hook_can_stop_training():
    class StopAtOne(HookBase):
        def after_step(self, trainer):
            trainer.stop = trainer.iter == 1

    trainer = ToyTrainer()
    trainer.register_hooks([StopAtOne()])
    trainer.train(batches(), max_iter=5)
    assert trainer.iter == 1


def test_periodic_action_and_time_limit():
    calls = []
    trainer = ToyTrainer()
    trainer.register_hooks([TrainTimer(0.0), Periodic(2, lambda: calls.append(trainer.iter))])
    trainer.train(batches(), max_iter=5)
    assert (trainer.iter, calls) == (5, [2, 4]) and trainer.train_seconds > 0
    limited = ToyTrainer()
    limited.register_hooks([TrainTimer(1e-9)])  # over the limit after the first step
    limited.train(batches(), max_iter=5)
    assert limited.iter == 1


def test_grad_scaler_branch_unscales_then_clips_on_cpu():
    clip = 0.05
    scaled = ToyTrainer(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0), clip=clip)
    seen = []

    class GradNorm(HookBase):
        def after_backward(self, trainer):  # before unscale: the gradients are still multiplied by the scale
            seen.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm().item())

    scaled.register_hooks([GradNorm()])
    batch = next(batches())
    before = [p.detach().clone() for p in scaled.model.parameters()]
    scaled.run_step(batch)

    reference = nn.Linear(3, 1)
    reference.load_state_dict({"weight": before[0], "bias": before[1]})
    ((reference(batch[0]) - batch[1]) ** 2).mean().backward()
    true_norm = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()
    assert true_norm > clip  # the clip is active
    assert seen[0] == pytest.approx(1024.0 * true_norm, rel=1e-5)
    for p, p0, g in zip(scaled.model.parameters(), before, (q.grad for q in reference.parameters())):
        assert torch.allclose(p.detach(), p0 - 0.1 * g * (clip / true_norm), atol=1e-6)


def test_grad_scaler_skips_an_inf_gradient_step_instead_of_raising():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = ToyTrainer(scaler=scaler)

    class Overflow(HookBase):
        def after_backward(self, trainer):
            trainer.model.weight.grad[0, 0] = float("inf")

    trainer.register_hooks([Overflow()])
    before = trainer.model.weight.detach().clone()
    trainer.run_step(next(batches()))
    assert torch.equal(trainer.model.weight.detach(), before) and scaler.get_scale() == 512.0


def test_non_finite_gradients_without_scaler_raise_before_the_step():
    trainer = ToyTrainer()

    class Poison(HookBase):
        def after_backward(self, trainer):
            trainer.model.bias.grad.fill_(float("nan"))

    trainer.register_hooks([Poison()])
    before = trainer.model.weight.detach().clone()
    with pytest.raises(TrainingDiverged, match=r"gradients are non-finite at iteration 1 \(.*first non-finite "
                                               r"gradient: bias; loss .*no checkpoint was written yet"):
        trainer.run_step(next(batches()))
    assert torch.equal(trainer.model.weight.detach(), before)


def test_non_finite_weights_are_refused_before_save():
    trainer = ToyTrainer()
    trainer.train(batches(), max_iter=1)
    trainer.check_weights()
    assert trainer.state_dict()["iteration"] == 1
    with torch.no_grad():
        trainer.model.weight[0, 1] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite at iteration 1 \(weight and 0 more"):
        trainer.check_weights()


def _rank_main(rank, store, scenario, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        trainer = ToyTrainer(rank=rank, world_size=2, poison_at=2 if (scenario == "loss" and rank == 1) else None)
        trainer.train(batches(), max_iter=2)
        if scenario == "weights" and rank == 1:
            with torch.no_grad():  # e.g. BatchNorm statistics that went bad on one rank only
                trainer.model.bias.fill_(float("nan"))
        trainer.check_weights()
        trainer.train(batches(), max_iter=4)
        results.put((rank, "finished"))
    except TrainingDiverged as error:
        results.put((rank, str(error)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("scenario", ["loss", "weights"])
def test_a_problem_on_one_rank_stops_every_rank(tmp_path, scenario):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, tmp_path / "store", scenario, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in range(2):
            rank, message = results.get(timeout=240)
            got[rank] = message
    except queue.Empty:
        pass
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():  # a rank waiting in a collective its peer never joined: the hang this prevents
                p.kill()
    assert set(got) == {0, 1}, f"ranks that returned: {got}"
    if scenario == "loss":  # poisoned at the third step, before its backward: iter counts completed steps
        assert got[1].startswith("loss is nan at iteration 3 (lr 0.1)"), got[1]
        assert got[0].startswith("loss is non-finite on rank 1 at iteration 3"), got[0]
    else:
        assert got[1].startswith("weights became non-finite at iteration 2 (bias and 0 more"), got[1]
        assert got[0].startswith("weights became non-finite at iteration 2 (on rank 1"), got[0]
