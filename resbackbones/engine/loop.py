"""The training loop core of both trainers (detectron2's SimpleTrainer / AMPTrainer.run_step, torchvision's
train_one_epoch): one step, one set of divergence checks, hooks.

    class MyTrainer(Trainer):           # ClsTrainer (cls_trainer.py), DetTrainer (det_trainer.py)
        def forward(self, batch): ...              # under autocast
        def losses(self, outputs, batch): ...      # outside autocast: {name: fp32 scalar}
        def step_position(self, index): ...        # "iteration 7" for messages
    trainer.register_hooks([EMAHook(ema), ...])
    trainer.train(data_iterator, max_iter)

A subclass sets model (the plain module: state dicts, checks), train_model (DDP / compile wrapper or model),
optimizer, scheduler, scaler (a GradScaler for fp16, else None), clip_grad_norm and checkpoint_path (the file a
divergence message says is kept). Every rank runs the same calls; the checks that can differ between ranks (the loss,
the weights) are all-reduced, so all ranks raise TrainingDiverged together instead of some waiting forever in the
next collective.
"""
import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NoReturn, Optional

import torch
from torch import nn

from .device import autocast
from .distributed import first_rank_with
from .setup import RunContext
from .tool_errors import TrainingDiverged, clip_and_check_grads, kept_checkpoint_note


class HookBase:
    """Called by Trainer on every rank, in registration order. Writers check trainer.is_main."""

    def before_train(self, trainer: "Trainer") -> None:
        """Once, before the first step of Trainer.train."""

    def after_backward(self, trainer: "Trainer") -> None:
        """Gradients present (scaled under fp16), before unscale / clip / check / optimizer step."""

    def after_step(self, trainer: "Trainer") -> None:
        """After the optimizer and scheduler step; trainer.iter already counts this step."""

    def after_train(self, trainer: "Trainer") -> None:
        """Once, when Trainer.train ends normally (not when a step raised)."""


@dataclass
class StepResult:
    """What run_step returns: the total loss and its terms (detached, fp32), the task's outputs and the batch."""

    loss: torch.Tensor
    losses: Dict[str, torch.Tensor]
    outputs: Any
    batch: Any


class Trainer:
    """The loop core: run_step, train, hooks, the divergence checks. See the module docstring for the contract."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler] = None
    clip_grad_norm: float = 0.0
    checkpoint_path: Path

    def __init__(self, run: RunContext):
        self.run = run
        self.device, self.amp, self.amp_reason, self.dist = run.device, run.amp, run.amp_reason, run.dist
        self.is_main = run.dist.is_main
        self.iter = 0  # completed optimizer steps
        self.train_seconds = 0.0  # training time so far, kept across resumes by trainers that save it
        self.hooks: List[HookBase] = []
        self.stop = False  # a hook sets it to end train() after the current step
        # Why training stopped before its length ("time_limit", "SIGINT", "SIGTERM"); None: it did not.
        self.stop_reason: Optional[str] = None
        self.signals: List[str] = []  # SIGINT / SIGTERM received inside catch_signals(), by name
        self.last_step: Optional[StepResult] = None

    # -- what a task provides ---------------------------------------------------------------------------------------
    def forward(self, batch) -> Any:
        """The model's outputs on a batch (runs under autocast)."""
        raise NotImplementedError

    def losses(self, outputs, batch) -> Dict[str, torch.Tensor]:
        """The loss terms (runs outside autocast; return fp32 scalars); their sum is optimized."""
        raise NotImplementedError

    def step_position(self, index: int) -> str:
        """Where step `index` (counted from 0) is, for divergence messages (e.g. "epoch 2, iteration 7"); each task
        keeps the numbering its users and scripts already parse."""
        return f"iteration {index + 1}"

    # -- hooks ----------------------------------------------------------------------------------------------------
    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (None entries are skipped); they are called in this order."""
        self.hooks.extend(h for h in hooks if h is not None)

    def call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)(self)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run_step(self, batch) -> StepResult:
        """One iteration: forward (autocast) -> fp32 losses -> non-finite check all-reduced over ranks -> zero_grad ->
        backward (GradScaler under fp16) -> after_backward hooks -> unscale + clip, or clip_and_check_grads ->
        optimizer.step -> scheduler.step. Raises TrainingDiverged on every rank together. Does not count the step
        (train() does, so a caller driving its own loop decides when)."""
        with autocast(self.device, self.amp):
            outputs = self.forward(batch)
        terms = {name: value.float() for name, value in self.losses(outputs, batch).items()}
        loss = sum(terms.values())
        self._check_loss(loss, terms)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.call_hooks("after_backward")
            if self.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            # inf gradients are routine under fp16: the scaler skips that step and lowers its scale by itself.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.call_hooks("after_backward")
            # Checked before the step, so the weights never take NaN/inf from a finite loss's gradients. DDP has
            # averaged the gradients, so every rank reaches the same verdict and all stop together.
            problem = clip_and_check_grads(self.model, self.clip_grad_norm)
            if problem is not None:
                self.diverged(f"gradients are non-finite at {self.step_position(self.iter)}",
                              f"{problem}; loss {loss.item():.4g}")
            self.optimizer.step()
        self.scheduler.step()
        return StepResult(loss.detach(), {k: v.detach() for k, v in terms.items()}, outputs, batch)

    def train(self, data: Iterator, max_iter: int) -> None:
        """before_train hooks; run_step on next(data) until max_iter steps are done or a hook sets self.stop (or,
        inside catch_signals, a signal arrived), with after_step hooks after each; after_train hooks."""
        self.stop = False
        self.train_model.train()
        self.call_hooks("before_train")
        while self.iter < max_iter and not self.stop:
            self.last_step = self.run_step(next(data))
            self.iter += 1
            self.call_hooks("after_step")
            self.check_signals()
        self.call_hooks("after_train")

    @contextlib.contextmanager
    def catch_signals(self) -> Iterator[None]:
        """Within the block SIGINT and SIGTERM do not end the process: they are noted (self.signals), and train()
        stops after the current step like train.time_limit_s (self.stop_reason names the signal), so the trainer
        saves a checkpoint and says so; a second signal interrupts at once (KeyboardInterrupt)."""
        with _signals_noted() as received:
            self.signals = received
            try:
                yield
            finally:
                self.signals = []

    def check_signals(self) -> bool:
        """Set self.stop (and stop_reason) when any rank received a signal inside catch_signals; every rank calls it
        at the same point (torchrun signals every rank, not at the same instant: they must stop at one step)."""
        if first_rank_with(bool(self.signals), self.device) is not None:
            self.stop = True
            self.stop_reason = self.stop_reason or (self.signals[0] if self.signals else "a signal on another rank")
        return self.stop

    # -- saving ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs (the task's trainer says what); called on every rank."""
        raise NotImplementedError

    def checked_state(self) -> Dict[str, Any]:
        """state_dict() once check_weights() passed: what a save writes. Every rank calls it (both are collective
        under DDP); the caller lets rank 0 write."""
        self.check_weights()
        return self.state_dict()

    # -- divergence -----------------------------------------------------------------------------------------------
    def _check_loss(self, loss: torch.Tensor, terms: Dict[str, torch.Tensor]) -> None:
        bad = not bool(torch.isfinite(loss.detach()))
        rank = first_rank_with(bad, self.device)  # before backward: a rank raising alone would hang the others
        if rank is None:
            return
        if bad:
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()) if len(terms) > 1 else ""
            self.diverged(f"loss is {loss.item()} at {self.step_position(self.iter)}", detail)
        self.diverged(f"loss is non-finite on rank {rank} at {self.step_position(self.iter)}")

    def check_weights(self) -> None:
        """Refuse to save non-finite weights or buffers (all ranks decide together). A finite loss can still come
        with non-finite gradients under fp16 or leave NaN BatchNorm statistics: never write those over the last
        good checkpoint."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        rank = first_rank_with(bool(bad), self.device)
        if rank is None:
            return
        where = f"{bad[0]} and {len(bad) - 1} more" if bad else f"on rank {rank}"
        when = self.step_position(self.iter - 1) if self.iter else "the start (before any step)"  # the last step's
        self.diverged(f"weights became non-finite at {when}", where)

    def diverged(self, what: str, detail: str = "") -> NoReturn:
        """Raise TrainingDiverged with the one message shape of every divergence check (scripts and tests parse
        "iteration N" and "last good checkpoint is kept: PATH"): "<what> (<detail>; lr X); training stopped, ..."."""
        kept = kept_checkpoint_note(self.checkpoint_path)
        lr = f"lr {self.optimizer.param_groups[0]['lr']:.4g}"
        raise TrainingDiverged(
            f"{what} ({detail + '; ' if detail else ''}{lr}); training stopped, {kept}. "
            f"Try a lower solver.base_lr, warm-up, solver.clip_grad_norm or amp=none.")


@contextlib.contextmanager
def _signals_noted() -> Iterator[List[str]]:
    """Within the block, SIGINT and SIGTERM append their name to the yielded list instead of ending the process (a
    second one raises KeyboardInterrupt); the previous handlers come back when the block ends, on an error too.
    Only the main thread may set handlers: elsewhere the signals keep theirs."""
    received: List[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    # A signal the process ignores (SIGINT of a background job started by a script) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if handler not in (signal.SIG_IGN, None)}
    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
