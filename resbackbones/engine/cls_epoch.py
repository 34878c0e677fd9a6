"""Classification's per-epoch bookkeeping on the loop core: running loss / top-1 sums, the tqdm bar or log line."""
import time
from typing import Dict, Mapping, Optional

import torch

from .distributed import all_reduce_sums
from .loop import HookBase


class EpochMeter(HookBase):
    """After each step of an epoch: add the batch's summed loss, correct predictions and count (this rank), advance
    trainer.iter_in_epoch, update the progress bar (or print every train.log_period iterations)."""

    KEYS = ("loss_sum", "correct", "count")

    def start(self, trainer, partial: Mapping[str, float], *, progress=None) -> None:
        """Begin an epoch; `partial` holds the sums (of all ranks) and "elapsed" of a resumed partial epoch."""
        # The partial sums are every rank's together (see totals): only rank 0 starts from them.
        self.sums = {k: torch.tensor(float(partial.get(k, 0.0)) if trainer.is_main else 0.0, dtype=torch.float64)
                     for k in self.KEYS}
        self.device = trainer.device
        self.progress = progress
        self.start_time = time.time() - float(partial.get("elapsed", 0.0))
        self.seen, self.tick = 0, time.time()

    def after_step(self, trainer) -> None:
        step = trainer.last_step
        targets = step.batch[1]
        n = targets.numel()
        self.sums["loss_sum"] += step.loss.double().cpu() * n
        self.sums["correct"] += (step.outputs.detach().argmax(1) == targets).sum().double().cpu()
        self.sums["count"] += n
        trainer.iter_in_epoch += 1
        self.seen += n * trainer.dist.world_size
        if self.progress is not None:
            rate = self.seen / max(1e-9, time.time() - self.tick)
            self.progress.set_postfix(loss=f"{step.loss.item():.3f}",
                                      lr=f"{trainer.optimizer.param_groups[0]['lr']:.3g}", img_s=f"{rate:.0f}",
                                      refresh=False)
            self.progress.update(1)
        elif trainer.cfg.train.log_period and trainer.is_main and trainer.iter % trainer.cfg.train.log_period == 0:
            print(f"epoch {trainer.epoch + 1} iter {trainer.iter_in_epoch}/{trainer.iters_this_epoch} "
                  f"loss {step.loss.item():.4f}", flush=True)

    def after_train(self, trainer) -> None:
        if self.progress is not None:
            self.progress.close()

    def totals(self) -> Dict[str, float]:
        """The epoch's sums over all ranks (a collective) and "elapsed" seconds since the epoch began."""
        totals = all_reduce_sums({k: float(v) for k, v in self.sums.items()}, self.device)
        totals["elapsed"] = time.time() - self.start_time
        return totals


def progress_bar(enabled: bool, total: int, initial: int, epoch: int, epochs: int) -> Optional[object]:
    """The epoch's tqdm bar ("epoch 2/3"), None when disabled (train.progress false, or not rank 0)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="it", dynamic_ncols=True,
                leave=False)


def epoch_line(row: Mapping, epochs: int) -> str:
    """The console line of a finished epoch: loss, train / val accuracy, lr, time, throughput."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"train top-1 {row['train_top1']:.2f}%"]
    if "val_top1" in row:
        parts += [f"val top-1 {row['val_top1']:.2f}%", f"top-5 {row['val_top5']:.2f}%"]
    parts += [f"lr {row['lr']:.4g}", f"{row['epoch_time_s']:.1f}s", f"{row['images_per_s']:.0f} img/s"]
    return "  ".join(parts)
