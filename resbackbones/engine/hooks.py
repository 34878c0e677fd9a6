"""Hooks the trainers register on the loop core (engine/loop.py): what happens around a step, apart from the step.

Trainer.build_hooks() returns the generic ones in this order (detectron2's DefaultTrainer.build_hooks): TrainTimer
(decides whether this step is the last: the others read trainer.stop), EMAHook, the task's logging / epoch hooks,
PeriodicCheckpointer, then the task's evaluation hooks; BestCheckpointer keeps the best so far for all of them. A
hook's state_dict() (when not empty) is saved in the checkpoint under trainer.hooks.<class name>.
"""
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional

from ..utils.comm import first_rank_with
from .checkpoint import CheckpointManager

if TYPE_CHECKING:
    from .ema import ModelEMA
    from .loop import Trainer


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

    def state_dict(self) -> Dict[str, Any]:
        """What a resume needs of this hook ({}: nothing); called on every rank (may be a collective)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


class EMAHook(HookBase):
    """Update the exponential moving average of the weights after every optimizer step (either task: the EMA is a
    checkpointable of the trainer's Checkpointer, so it is saved and resumed with the rest)."""

    def __init__(self, ema: "ModelEMA"):
        self.ema = ema

    def after_step(self, trainer: "Trainer") -> None:
        self.ema.update(trainer.model)


class Periodic(HookBase):
    """Call action() after every `period`-th iteration (0 = never), on every rank: checkpoints and evaluations
    gather from all ranks, and the action decides who writes."""

    def __init__(self, period: int, action: Callable[[], object]):
        self.period = period
        self.action = action

    def after_step(self, trainer: "Trainer") -> None:
        if self.period and trainer.iter % self.period == 0:
            self.action()


class PeriodicCheckpointer(HookBase):
    """Save OUTPUT/checkpoints/last.pt every `period` iterations (train.checkpoint_period; 0 = never), unless
    training ends after this step (Trainer.fit saves then) or another hook saved at this iteration already."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer: "Trainer") -> None:
        if (self.period and trainer.iter % self.period == 0 and not trainer.done()
                and trainer.checkpointer.saved_iteration != trainer.iter):
            trainer.save()


class EvalHook(HookBase):
    """Call eval_fn() every `period` iterations (train.eval_period; 0 = never) on every rank, except after the
    last step (the final evaluation of Trainer.fit follows)."""

    def __init__(self, period: int, eval_fn: Callable[[], object]):
        self.period = period
        self.eval_fn = eval_fn

    def after_step(self, trainer: "Trainer") -> None:
        if self.period and trainer.iter % self.period == 0 and not trainer.done():
            self.eval_fn()


class BestCheckpointer(HookBase):
    """OUTPUT/checkpoints/best.pt when `metric` improves (detectron2's BestCheckpointer): NaN or a missing value
    never wins, ties keep the earlier one. Its state (best_metric, best_metric_name, best_iteration) is saved with
    every checkpoint, so a resumed run knows the best so far."""

    def __init__(self, folder: Path, metric: str, mode: str = "max"):
        self.tracker = CheckpointManager(folder, metric=metric, mode=mode)

    @property
    def metric(self) -> str:
        return self.tracker.metric

    def record(self, trainer: "Trainer", metrics: Dict[str, Any], *, always_save: bool,
               also: Iterable[str] = ()) -> bool:
        """Note metrics[metric] at trainer.iter; save last.pt (+ best.pt when it improved, + `also`) when it
        improved or always_save. Every rank calls it. Returns whether it improved."""
        value = metrics.get(self.metric)
        improved = self.tracker.is_better(value)
        if improved:
            self.tracker.best, self.tracker.best_iteration = float(value), trainer.iter
        if improved or always_save:
            trainer.save(also=(*also, "best") if improved else tuple(also))
        return improved

    def state_dict(self) -> Dict[str, Any]:
        return self.tracker.state() if self.tracker.best is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.tracker.load_best(state)


class TrainTimer(HookBase):
    """Keep trainer.train_seconds (training time, continued across resumes) and stop training once it passes
    limit_s (0 = no limit, train.time_limit_s): trainer.stop ends train() after this step, and the trainer saves a
    checkpoint --resume continues from. Every rank stops at the same step (the decision is all-reduced: a rank
    stopping alone would leave the others waiting in the next collective)."""

    def __init__(self, limit_s: float = 0.0):
        self.limit_s = limit_s
        self.start = time.perf_counter()

    def before_train(self, trainer: "Trainer") -> None:
        self.start = time.perf_counter() - trainer.train_seconds

    def after_step(self, trainer: "Trainer") -> None:
        trainer.train_seconds = time.perf_counter() - self.start
        if self.limit_s and first_rank_with(trainer.train_seconds > self.limit_s, trainer.device) is not None:
            trainer.stop, trainer.stop_reason = True, trainer.stop_reason or "time_limit"


class MetricsWriter(HookBase):
    """The training log of an iteration-based run: every `period` iterations (and at the last one) one metrics row
    with the mean of each loss term over the window, "loss", "lr" and "time_s" (trainer.logger); period 0: one row
    at the end only; a tqdm bar when `progress`. Register after TrainTimer, which decides whether this step is the
    last."""

    def __init__(self, period: int, max_iter: int, *, progress: bool):
        self.period, self.max_iter, self.progress = period, max_iter, progress
        self.window: List[Dict[str, float]] = []
        self.bar = None

    def before_train(self, trainer: "Trainer") -> None:
        self.window = []
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.max_iter, initial=trainer.iter, desc="train", dynamic_ncols=True, leave=False)

    def after_step(self, trainer: "Trainer") -> None:
        step = trainer.last_step
        row = {k: float(v) for k, v in step.losses.items()}
        row["loss"] = float(step.loss)
        self.window.append(row)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{trainer.optimizer.param_groups[0]['lr']:.4g}")
        if (self.period and trainer.iter % self.period == 0) or trainer.stop or trainer.iter >= self.max_iter:
            self._flush(trainer)

    def after_train(self, trainer: "Trainer") -> None:
        self._flush(trainer)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _flush(self, trainer: "Trainer") -> None:
        if not self.window:
            return
        row = {"iter": trainer.iter, "lr": trainer.optimizer.param_groups[0]["lr"],
               "time_s": round(trainer.train_seconds, 2)}
        for key in self.window[0]:
            row[key] = sum(r[key] for r in self.window) / len(self.window)
        trainer.logger.log(row)
        self.window = []


def stopped_early(trainer: "Trainer", max_iter: int) -> Optional[Dict[str, Any]]:
    """eval.json's record of a stop before the run's length (None when it did not stop early): {"reason":
    "time_limit" | "SIGINT" | "SIGTERM", "iteration", "max_iter", "train_seconds"[, "time_limit_s"]}."""
    if not trainer.stop_reason or trainer.iter >= max_iter:
        return None
    record = {"reason": trainer.stop_reason, "iteration": trainer.iter, "max_iter": max_iter,
              "train_seconds": round(trainer.train_seconds, 1)}
    if trainer.stop_reason == "time_limit":
        record["time_limit_s"] = trainer.cfg.train.time_limit_s
    return record


def early_stop_line(trainer: "Trainer", max_iter: int, position: str = "") -> str:
    """The one console line of an early stop: what stopped it, where, the checkpoint kept and how to continue."""
    limit = trainer.cfg.train.time_limit_s
    if trainer.stop_reason == "time_limit":
        what = f"train.time_limit_s ({limit:g} s; {trainer.train_seconds:.1f} s trained)"
        # The limit counts the training time of the whole run, resumed parts included: the same limit stops again.
        how = "--resume train.time_limit_s=<more seconds, 0 = none>"
    else:
        what, how = trainer.stop_reason, "--resume"
    return (f"stopped early by {what} at iteration {trainer.iter} of {max_iter}{position}: checkpoint "
            f"{trainer.checkpoint_path} kept; the run is resumable: continue it with {how}")


def raise_for_signal(trainer: "Trainer", max_iter: int) -> None:
    """After a signal stopped training before max_iter and its checkpoint is saved: end the process as that signal
    would (SIGINT: KeyboardInterrupt, exit 130 through the tools; SIGTERM: exit 143)."""
    if trainer.iter >= max_iter:
        return
    if trainer.stop_reason == "SIGTERM":
        raise SystemExit(143)
    if trainer.stop_reason not in (None, "time_limit"):
        raise KeyboardInterrupt
