"""Epochs on the one loop (engine/loop.py): classification trains in iterations like detection, and this hook turns
every iters_per_epoch-th iteration (and the last one) into the end of an epoch: the epoch's row (loss and top-1
sums all-reduced over ranks), the evaluation every train.eval_period epochs, the checkpoint, the console line.

A checkpoint inside an epoch records the epoch's sums so far (every rank's, together): a resumed run continues the
epoch where it stopped, and its row is the row of an uninterrupted run.
"""
import math
import time
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..utils.comm import all_reduce_sums
from .hooks import HookBase
from .metrics_log import CURVES_NAME, plot_error_curves

Row = Dict[str, Any]


class EpochBoundary(HookBase):
    """After each step: add the batch's summed loss, correct predictions and count (this rank), update the epoch's
    tqdm bar (or print every train.log_period iterations); at an epoch's end call on_epoch_end(trainer, row) with
    row = {"epoch", "iter", "train_loss", "train_top1", "epoch_time_s", "images_per_s", "lr"}. `last_row` is the
    row on_epoch_end returned last ({} before the first epoch end of this process)."""

    KEYS = ("loss_sum", "correct", "count")

    def __init__(self, iters_per_epoch: int, on_epoch_end: Callable[[Any, Row], Row], *, device: torch.device,
                 is_main: bool, progress: bool = False, log_period: int = 0):
        self.ipe, self.on_epoch_end, self.device, self.is_main = iters_per_epoch, on_epoch_end, device, is_main
        self.progress, self.log_period = progress and is_main, log_period
        self.last_row: Row = {}
        self.bar = None
        self._reset(0.0)

    def _reset(self, elapsed: float, sums: Optional[Mapping[str, float]] = None) -> None:
        sums = sums or {}
        self.sums = {k: torch.tensor(float(sums.get(k, 0.0)), dtype=torch.float64) for k in self.KEYS}
        self.started = time.time() - elapsed
        self.seen, self.tick = 0, time.time()

    def epochs(self, trainer) -> int:
        return math.ceil(trainer.max_iter / self.ipe)

    def before_train(self, trainer) -> None:
        self._open_bar(trainer)

    def _open_bar(self, trainer) -> None:
        if not self.progress or trainer.iter >= trainer.max_iter:
            return
        from tqdm import tqdm

        epoch, inside = divmod(trainer.iter, self.ipe)
        total = min(self.ipe, trainer.max_iter - epoch * self.ipe)
        self.bar = tqdm(total=total, initial=inside, desc=f"epoch {epoch + 1}/{self.epochs(trainer)}", unit="it",
                        dynamic_ncols=True, leave=False)

    def after_step(self, trainer) -> None:
        step = trainer.last_step
        targets = step.batch[1]
        n = targets.numel()
        self.sums["loss_sum"] += step.loss.double().cpu() * n
        self.sums["correct"] += (step.outputs.detach().argmax(1) == targets).sum().double().cpu()
        self.sums["count"] += n
        self.seen += n * trainer.dist.world_size
        if self.bar is not None:
            rate = self.seen / max(1e-9, time.time() - self.tick)
            self.bar.set_postfix(loss=f"{step.loss.item():.3f}", lr=f"{trainer.optimizer.param_groups[0]['lr']:.3g}",
                                 img_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif self.log_period and self.is_main and trainer.iter % self.log_period == 0:
            epoch, inside = divmod(trainer.iter - 1, self.ipe)
            total = min(self.ipe, trainer.max_iter - epoch * self.ipe)
            print(f"epoch {epoch + 1} iter {inside + 1}/{total} loss {step.loss.item():.4f}", flush=True)
        if trainer.iter % self.ipe and trainer.iter < trainer.max_iter:
            return
        totals = self.totals()
        self._reset(0.0)
        self._close_bar()
        count = max(1.0, totals["count"])
        row = {"epoch": math.ceil(trainer.iter / self.ipe), "iter": trainer.iter,
               "train_loss": totals["loss_sum"] / count, "train_top1": 100.0 * totals["correct"] / count,
               "epoch_time_s": totals["elapsed"], "images_per_s": totals["count"] / max(1e-9, totals["elapsed"]),
               "lr": trainer.optimizer.param_groups[0]["lr"]}
        self.last_row = self.on_epoch_end(trainer, row)
        if not trainer.done():
            self._open_bar(trainer)

    def after_train(self, trainer) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def totals(self) -> Dict[str, float]:
        """The epoch's sums over all ranks (a collective) and "elapsed" seconds since the epoch began."""
        totals = all_reduce_sums({k: float(v) for k, v in self.sums.items()}, self.device)
        totals["elapsed"] = time.time() - self.started
        return totals

    def state_dict(self) -> Dict[str, Any]:
        return {"sums": self.totals()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        sums = dict(state.get("sums") or {})
        # The saved sums are every rank's together: only rank 0 starts from them.
        self._reset(float(sums.get("elapsed", 0.0)), sums if self.is_main else None)


def end_of_epoch(trainer, row: Row) -> Row:
    """Classification's epoch end: evaluate every train.eval_period epochs (0: none before the end) and after the
    last step, log the row to metrics.csv, save last.pt (best.pt by val_top1, epoch_N.pt every train.keep_every
    epochs), plot the curves, print the epoch line. Every rank calls it."""
    epoch, tcfg = row["epoch"], trainer.cfg.train
    if trainer.iter >= trainer.max_iter or (tcfg.eval_period and epoch % tcfg.eval_period == 0):
        row.update(trainer.evaluate())
        trainer.train_model.train()
    trainer.logger.log(row)
    keep = (f"epoch_{epoch}",) if tcfg.keep_every and epoch % tcfg.keep_every == 0 else ()
    trainer.best.record(trainer, row, always_save=True, also=keep)
    if trainer.is_main:
        plot_error_curves(trainer.logger.rows, trainer.output_dir / CURVES_NAME,
                          title=f"{trainer.cfg.model.backbone.name}: train (dashed) / val (bold) error")
        print(epoch_line(row, math.ceil(trainer.max_iter / trainer.iters_per_epoch)), flush=True)
    return row


def epoch_line(row: Mapping, epochs: int) -> str:
    """The console line of a finished epoch: loss, train / val accuracy, lr, time, throughput."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"train top-1 {row['train_top1']:.2f}%"]
    if "val_top1" in row:
        parts += [f"val top-1 {row['val_top1']:.2f}%", f"top-5 {row['val_top5']:.2f}%"]
    parts += [f"lr {row['lr']:.4g}", f"{row['epoch_time_s']:.1f}s", f"{row['images_per_s']:.0f} img/s"]
    return "  ".join(parts)
