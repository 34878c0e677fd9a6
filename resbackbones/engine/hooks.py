"""Hooks the trainers register on the loop core (engine/loop.py): what happens around a step, apart from the step."""
import time
from typing import Any, Callable, Dict, List, Optional

from .distributed import first_rank_with
from .ema import ModelEMA
from .loop import HookBase, Trainer


class EMAHook(HookBase):
    """Update the exponential moving average of the weights after every optimizer step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self, trainer: Trainer) -> None:
        self.ema.update(trainer.model)


class Periodic(HookBase):
    """Call action() after every `period`-th iteration (0 = never), on every rank: checkpoints and evaluations
    gather from all ranks, and the action decides who writes. The action skips what the trainer does anyway (at the
    end of an epoch or of training)."""

    def __init__(self, period: int, action: Callable[[], object]):
        self.period = period
        self.action = action

    def after_step(self, trainer: Trainer) -> None:
        if self.period and trainer.iter % self.period == 0:
            self.action()


class TrainTimer(HookBase):
    """Keep trainer.train_seconds (training time, continued across resumes) and stop training once it passes
    limit_s (0 = no limit, train.time_limit_s): trainer.stop ends train() after this step, and the trainer saves a
    checkpoint --resume continues from. Every rank stops at the same step (the decision is all-reduced: a rank
    stopping alone would leave the others waiting in the next collective)."""

    def __init__(self, limit_s: float = 0.0):
        self.limit_s = limit_s
        self.start = time.perf_counter()

    def before_train(self, trainer: Trainer) -> None:
        self.start = time.perf_counter() - trainer.train_seconds

    def after_step(self, trainer: Trainer) -> None:
        trainer.train_seconds = time.perf_counter() - self.start
        if self.limit_s and first_rank_with(trainer.train_seconds > self.limit_s, trainer.device) is not None:
            trainer.stop, trainer.stop_reason = True, trainer.stop_reason or "time_limit"


class LossWindow(HookBase):
    """The training log of an iteration-based run: every `period` iterations (and at the last one) one metrics row
    with the mean of each loss term over the window, "loss", "lr" and "time_s" (trainer.logger); period 0: one row
    at the end only; a tqdm bar when `progress`. Register after TrainTimer, which decides whether this step is the last."""

    def __init__(self, period: int, max_iter: int, *, progress: bool):
        self.period, self.max_iter, self.progress = period, max_iter, progress
        self.window: List[Dict[str, float]] = []
        self.bar = None

    def before_train(self, trainer: Trainer) -> None:
        self.window = []
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.max_iter, initial=trainer.iter, desc="train", dynamic_ncols=True, leave=False)

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.last_step
        row = {k: float(v) for k, v in step.losses.items()}
        row["loss"] = float(step.loss)
        self.window.append(row)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{trainer.optimizer.param_groups[0]['lr']:.4g}")
        if (self.period and trainer.iter % self.period == 0) or trainer.stop or trainer.iter >= self.max_iter:
            self._flush(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._flush(trainer)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _flush(self, trainer: Trainer) -> None:
        if not self.window:
            return
        row = {"iter": trainer.iter, "lr": trainer.optimizer.param_groups[0]["lr"],
               "time_s": round(trainer.train_seconds, 2)}
        for key in self.window[0]:
            row[key] = sum(r[key] for r in self.window) / len(self.window)
        trainer.logger.log(row)
        self.window = []


def stopped_early(trainer: Trainer, max_iter: int) -> Optional[Dict[str, Any]]:
    """eval.json's record of a stop before the run's length (None when it did not stop early): {"reason":
    "time_limit" | "SIGINT" | "SIGTERM", "iteration", "max_iter", "train_seconds"[, "time_limit_s"]}."""
    if not trainer.stop_reason or trainer.iter >= max_iter:
        return None
    record = {"reason": trainer.stop_reason, "iteration": trainer.iter, "max_iter": max_iter,
              "train_seconds": round(trainer.train_seconds, 1)}
    if trainer.stop_reason == "time_limit":
        record["time_limit_s"] = trainer.cfg.train.time_limit_s
    return record


def early_stop_line(trainer: Trainer, max_iter: int, position: str = "") -> str:
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


def raise_for_signal(trainer: Trainer, max_iter: int) -> None:
    """After a signal stopped training before max_iter and its checkpoint is saved: end the process as that signal
    would (SIGINT: KeyboardInterrupt, exit 130 through the tools; SIGTERM: exit 143)."""
    if trainer.iter >= max_iter:
        return
    if trainer.stop_reason == "SIGTERM":
        raise SystemExit(143)
    if trainer.stop_reason not in (None, "time_limit"):
        raise KeyboardInterrupt
