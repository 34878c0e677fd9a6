"""One run setup for both trainers: device, autocast mode, DDP, CPU threads, deterministic kernels, seeds.

    run = setup_run(cfg.train, fixed_input_size=True)   # classification; detection passes False
    run.device, run.amp, run.amp_reason, run.dist

Seeding rule: python, numpy and torch are seeded with train.seed + rank before anything random is built. Rank 0
(also every single-process run) keeps train.seed, so single-process runs start as before; DDP broadcasts rank 0's
initial weights, and the other ranks' own draws (dropout, RPN / RoI sampling) differ, as they should. Data order
and augmentation never come from these global generators: they depend only on (seed, epoch, sample index)
(engine/data_loading.py), so they are the same whatever the number of processes and workers.
"""
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..utils.amp import resolve_amp, resolve_device, set_deterministic
from ..utils.comm import DistInfo, init_distributed


@dataclass(frozen=True)
class RunContext:
    """What setup_run decided for this process."""

    device: torch.device
    amp: str          # the autocast mode used for training (utils.amp.AMP_CHOICES)
    amp_reason: str   # why (for the log)
    dist: DistInfo

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def set_threads(threads: int, device: torch.device, *, deterministic: bool, verbose: bool) -> None:
    """threads > 0: use that many; 0: torch's default, except on an oversubscribed CPU (load average >= cores,
    no OMP_NUM_THREADS set, not deterministic) where one thread is used: OpenMP threads spin-waiting for
    descheduled siblings made 2-thread training ~6x slower than 1-thread on a shared 2-core machine."""
    if threads > 0:
        torch.set_num_threads(threads)
        return
    if device.type != "cpu" or deterministic or "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > 1 and os.getloadavg()[0] >= cores:
        torch.set_num_threads(1)
        if verbose:
            print(f"note: CPU oversubscribed (load {os.getloadavg()[0]:.1f} on {cores} cores): using 1 thread; "
                  f"set train.num_threads=N to override", flush=True)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (torch also seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_run(train_cfg, *, fixed_input_size: bool) -> RunContext:
    """Apply a training config's `train` section (device, amp, num_threads, deterministic, seed) to this process
    and join the DDP group torchrun describes. fixed_input_size: every batch has one shape (classification), so
    cuDNN may benchmark its algorithms once; detection's image sizes vary and would re-benchmark at every new shape.
    Raises ValueError (one line) for a device or amp mode this machine cannot run."""
    device = resolve_device(train_cfg.device)
    amp, amp_reason = resolve_amp(train_cfg.amp, device)  # fp16 on CPU is refused here, before any work
    dist = init_distributed(device)
    set_threads(train_cfg.num_threads, device, deterministic=train_cfg.deterministic, verbose=dist.is_main)
    set_deterministic(train_cfg.deterministic)
    torch.backends.cudnn.benchmark = fixed_input_size and not train_cfg.deterministic
    seed_everything(train_cfg.seed + dist.rank)
    return RunContext(device=device, amp=amp, amp_reason=amp_reason, dist=dist)
