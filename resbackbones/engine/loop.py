"""The training loop of both trainers (detectron2's SimpleTrainer / AMPTrainer.run_step and DefaultTrainer,
torchvision's train_one_epoch): one step, one set of divergence checks, hooks, and the run around them (the
Checkpointer, build_hooks, resume, the DDP wrap, fit).

    class MyTrainer(Trainer):           # ClsTrainer (cls_trainer.py), DetTrainer (det_trainer.py)
        task = "det"; best_metric = "bbox_AP"; metrics_format = {"index_key": "iter"}
        def __init__(self, cfg, resume):
            super().__init__(setup_run(cfg.train, ...)); ...build model, data, optimizer, scheduler, scaler...
            self.setup_run(resume)              # checkpointer, hooks, resume, logger, config.yaml, DDP
        def data_iter(self): ...                   # endless stream of batches from self.iter on
        def forward(self, batch): ...              # under autocast
        def losses(self, outputs, batch): ...      # outside autocast: {name: fp32 scalar}
        def task_hooks(self) / build_hooks(self) / extras(self) / after_fit(self, early)
    trainer.fit()

A subclass sets cfg, output_dir, model (the plain module: state dicts, checks), optimizer, scheduler, scaler (a
GradScaler for fp16, else None), ema (a ModelEMA or None), clip_grad_norm, max_iter, iters_per_epoch (None: the task
counts iterations only) and checkpoint_path (the file a divergence message says is kept); setup_run sets train_model
(the DDP / compile wrapper, or model). A bare Trainer (tests) sets model / train_model itself and calls train().
Every rank runs the same calls; the checks that can differ between ranks (the loss, the weights) are all-reduced,
so all ranks raise TrainingDiverged together instead of some waiting forever in the next collective.
"""
import contextlib
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NoReturn, Optional, Tuple

import torch
from torch import nn

from ..config import ConfigError, to_dict
from ..utils import comm
from ..utils.amp import autocast
from ..utils.comm import first_rank_with
from .checkpoint import LAST, Checkpointer, checkpoints_dir
from .hooks import (BestCheckpointer, EMAHook, HookBase, PeriodicCheckpointer, TrainTimer, early_stop_line,
                    raise_for_signal, stopped_early)
from .metrics_log import MetricsLogger
from .resume_changes import (apply_solver_changes, compare_resume_config, fresh_solver_state, recorded_changes,
                             write_run_config)
from .setup import RunContext
from .tool_errors import TrainingDiverged, clip_and_check_grads, kept_checkpoint_note

__all__ = ["HookBase", "StepResult", "Trainer"]


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
    ema: Any = None  # a ModelEMA when the run keeps one
    clip_grad_norm: float = 0.0
    checkpoint_path: Path
    task: str = ""  # "cls" | "det": checkpoints and the config comparison of a resume name it
    best_metric: str = ""  # the metric best.pt is chosen by
    metrics_format: Dict[str, Any] = {}  # MetricsLogger's columns / index_key
    iters_per_epoch: Optional[int] = None  # set by tasks that count epochs (EpochBoundary)
    max_iter: int = 0

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
        self.config_changes: List = []  # every resume's applied changes (engine/resume_changes.py)

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

    # -- the run: checkpointer, hooks, resume, fit (detectron2's DefaultTrainer) -----------------------------------
    def build_hooks(self) -> List[Optional[HookBase]]:
        """The hooks of a run, in order (see engine/hooks.py): TrainTimer, EMAHook, task_hooks(), the best-so-far
        tracker, PeriodicCheckpointer. A task trainer extends the list (evaluation hooks go last)."""
        tcfg = self.cfg.train
        return [TrainTimer(tcfg.time_limit_s), EMAHook(self.ema) if self.ema is not None else None,
                *self.task_hooks(), self.best, PeriodicCheckpointer(tcfg.checkpoint_period)]

    def task_hooks(self) -> List[Optional[HookBase]]:
        """The task's logging / epoch hooks, registered after the timer and the EMA, before the checkpointer."""
        return []

    def extras(self) -> Dict[str, Any]:
        """What the task records in every checkpoint's "extras" (classes and arch; labels and categories)."""
        return {}

    @property
    def batch_per_rank(self) -> int:
        """solver.batch_size / the number of processes; ConfigError when it does not divide."""
        world, batch = self.dist.world_size, self.cfg.solver.batch_size
        if batch % world:
            raise ConfigError(f"config key 'solver.batch_size' ({batch}) must be divisible by the number of "
                              f"processes ({world})")
        return batch // world

    def position(self, iteration: int) -> str:
        """Where `iteration` completed steps are, for the resume lines ("epoch 2, iteration 14")."""
        ipe = self.iters_per_epoch
        return f"epoch {iteration // ipe}, iteration {iteration}" if ipe else f"iteration {iteration}"

    def setup_run(self, resume: Any, *, write_run_files: bool = True, compare: bool = True) -> None:
        """Once the task built model, data and solver: the Checkpointer and the hooks, the resume (resume: False,
        True = the last checkpoint of the output folder, or a path; its recorded config compared with this run's,
        engine/resume_changes.py, unless compare is False), the metrics logger, config.yaml, the DDP / compile
        wrap. The checkpoint is read and compared before anything is written: a refused resume leaves the run
        folder as it was."""
        _ = self.batch_per_rank  # ConfigError for a batch the processes cannot share, before anything is written
        folder = checkpoints_dir(self.output_dir)
        self.checkpoint_path = folder / LAST
        self.best = BestCheckpointer(folder, self.best_metric)
        self.checkpointer = Checkpointer(
            self.model, folder, is_main=self.is_main, rank=self.dist.rank, task=self.task,
            config=lambda: to_dict(self.cfg), optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            ema=self.ema, trainer=self)
        self.register_hooks(self.build_hooks())
        fresh = fresh_solver_state(self.optimizer, self.scheduler)  # this config's lr, before the checkpoint's
        resumed = (self.checkpointer.resume_or_load(resume, output=self.output_dir, map_location=self.device)
                   if resume else None)
        changes: List = []
        if resumed is not None:
            at, ipe = self.iter, self.iters_per_epoch
            min_length = {"solver.max_iter": at + 1, "solver.epochs": at // ipe + 1} if ipe else None
            where = f"epoch {at // ipe} + {at % ipe} iterations, iteration {at}" if ipe else f"iteration {at}"
            changes = compare_resume_config(resumed["config"] if compare else None, self.cfg, task=self.task,
                                            checkpoint=resumed["path"], iteration=at, total_iters=self.max_iter,
                                            position=where, min_length=min_length)
            apply_solver_changes(self.optimizer, self.scheduler, fresh, changes)
            self.config_changes = recorded_changes(resumed["extras"]) + list(changes)
        self.logger = MetricsLogger(self.output_dir, enabled=self.is_main and write_run_files,
                                    tensorboard=self.cfg.train.tensorboard, **self.metrics_format)
        if resumed is not None:
            self.logger.resume(self.iter // self.iters_per_epoch if self.iters_per_epoch else self.iter)
            if self.is_main:
                print(f"resumed from {resumed['path']}: {self.position(self.iter)}", flush=True)
                for change in changes:
                    print(change.line(), flush=True)
        if self.is_main and write_run_files:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(self.cfg, self.output_dir / "config.yaml", self.config_changes)
        self.wrap_model()

    def wrap_model(self) -> None:
        """train_model: the model under DDP when distributed (SyncBN first with model.sync_bn), compiled with
        model.compile; self.model stays the plain module (state dicts, EMA, export)."""
        mcfg = self.cfg.model
        if self.dist.enabled and getattr(mcfg, "sync_bn", False):
            self.model = comm.convert_sync_bn(self.model, self.device)
            self.checkpointer.model = self.model
        self.train_model = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if getattr(mcfg, "compile", False):
            self.train_model = torch.compile(self.train_model)

    def state_dict(self) -> Dict[str, Any]:
        """The loop's position and every hook's state (detectron2's TrainerBase.state_dict); every rank calls it."""
        hooks = {type(h).__qualname__: h.state_dict() for h in self.hooks}
        return {"iteration": self.iter, "train_seconds": self.train_seconds,
                "hooks": {name: state for name, state in hooks.items() if state}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.iter = int(state["iteration"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        saved = state.get("hooks") or {}
        for hook in self.hooks:
            if type(hook).__qualname__ in saved:
                hook.load_state_dict(saved[type(hook).__qualname__])

    def save(self, *, also: Tuple[str, ...] = ()) -> Optional[Path]:
        """OUTPUT/checkpoints/last.pt (and `also`; iter_N.pt every train.keep_every iterations for iteration-based
        tasks) once the weights are checked finite. Every rank calls it (both the check and the RNG states are
        gathered); rank 0 writes."""
        self.check_weights()
        keep = self.period_iterations(self.cfg.train.keep_every)
        if keep and not self.iters_per_epoch and self.iter % keep == 0:
            also = (*also, f"iter_{self.iter}")
        path = self.checkpointer.save("last", also=also, config_changes=[c.to_dict() for c in self.config_changes],
                                      **self.extras())
        comm.barrier()
        return path

    def period_iterations(self, count: int) -> int:
        """`count` of train.period_unit in iterations (train.eval_period, keep_every): an epoch is iters_per_epoch,
        or ceil(train images / solver.batch_size) for a task that does not count epochs itself (detection)."""
        if self.cfg.train.period_unit == "iter":
            return count
        return count * (self.iters_per_epoch or math.ceil(len(self.train_set) / self.cfg.solver.batch_size))

    def done(self) -> bool:
        """Training ends after this step: the configured length, or a hook stopped it (train.time_limit_s)."""
        return self.stop or self.iter >= self.max_iter

    def data_iter(self) -> Iterator:
        """This rank's endless stream of training batches from iteration self.iter on."""
        raise NotImplementedError

    def after_fit(self, early: Optional[Dict[str, Any]]) -> Any:
        """What fit returns, after training and the final save (the final evaluation, the last epoch's row)."""
        return {}

    def fit(self) -> Any:
        """Train to max_iter (or until train.time_limit_s / a signal: stop after the step, save, say so), save
        last.pt unless the last step did, then after_fit (the task's final evaluation); a signal then ends the
        process as it would have (raise_for_signal)."""
        if self.iter < self.max_iter:
            with self.catch_signals():
                self.train(self.data_iter(), self.max_iter)
        if self.checkpointer.saved_iteration != self.iter:
            self.save()
        early = stopped_early(self, self.max_iter)
        if early and self.is_main:
            ipe = self.iters_per_epoch
            where = f" ({self.iter // ipe} epochs + {self.iter % ipe} iterations)" if ipe else ""
            print(early_stop_line(self, self.max_iter, where), flush=True)
        try:
            result = self.after_fit(early)
        finally:
            self.logger.close()
        raise_for_signal(self, self.max_iter)
        return result

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
