"""Classification training loop: data -> model -> SGD/schedule -> metrics/checkpoints, same code on CPU and GPUs.

    trainer = ClsTrainer(cfg, resume=True)   # cfg: ClsConfig
    trainer.fit()                           # -> final metrics dict
    trainer.evaluate()                      # -> {"val_top1", "val_top5", "val_loss", "val_count"}

DDP comes from torchrun's environment; only rank 0 writes. A resumed run is bit-identical to an uninterrupted
one in deterministic mode (same device and thread count): the checkpoint holds every state and the data order
and augmentation depend only on (seed, epoch, sample index).
"""
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as rb_weights
from ..backbones import build_classifier
from ..config import ConfigError, to_dict
from ..config.cls import ClsConfig
from ..data.cls_transforms import TransformedDataset, build_cls_transform
from ..data.errors import DataError
from ..data.folders import ImageFolderDataset, find_split
from ..data.synthetic_cls import default_cache_dir, write_image_folder
from ..io.outputs import register_owned_run
from . import distributed as dist_utils
from .cls_epoch import EpochMeter, epoch_line, progress_bar
from .checkpoint import (CheckpointManager, checkpoints_dir, find_resume_checkpoint, gathered_rng_state,
                         load_checkpoint, load_optimizer_state, restore_rng_state)
from .data_loading import ResumableSampler, make_loader
from ..evaluation.classification import ClassificationEvaluator
from ..evaluation.inference import inference_on_dataset
from .device import grad_scaler
from .ema import ModelEMA
from .hooks import EMAHook, Periodic, TrainTimer, early_stop_line, raise_for_signal
from .loop import Trainer
from .metrics_log import CURVES_NAME, MetricsLogger, plot_error_curves
from .optim import build_optimizer_for, build_scheduler, weight_penalty
from .resume_changes import (apply_solver_changes, compare_resume_config, fresh_solver_state, recorded_changes,
                             write_run_config)
from .setup import setup_run
from .tool_errors import TrainingDiverged  # noqa: F401 (also imported from here)

# What a run writes into its output folder (train_cls --overwrite deletes these and nothing else).
RUN_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", CURVES_NAME, "tensorboard", "checkpoints")
METRIC_COLUMNS = ("epoch", "iter", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr",
                  "epoch_time_s", "images_per_s")


class ClsTrainer(Trainer):
    """The classification task on the loop core (engine/loop.py): epochs of run_step, evaluated and checkpointed at
    every epoch end; `iter` (alias global_iter) counts optimizer steps over the whole run."""

    def __init__(self, cfg: ClsConfig, *, resume: object = False, build_train: bool = True,
                 write_run_files: bool = True):
        """resume: False, True (engine.checkpoint.find_resume_checkpoint: the last checkpoint of output_dir, if
        any) or a checkpoint path.
        write_run_files=False (evaluation of a run): config.yaml and the metrics files of the run stay as they are."""
        super().__init__(setup_run(cfg.train, fixed_input_size=True))
        self.cfg = cfg
        self.output_dir = Path(cfg.train.output_dir)
        register_owned_run(self.output_dir)  # this trainer writes its run's files, the last.pt it resumed from too
        self.checkpoint_path = checkpoints_dir(self.output_dir) / "last.pt"
        self._build_data(build_train)
        self._build_model()
        self.epoch = 0            # completed epochs
        self.iter_in_epoch = 0    # completed iterations of the current epoch
        self.iters_this_epoch = 0
        self._partial: Dict[str, float] = {}
        self.ema: Optional[ModelEMA] = None
        self.config_changes: List = []  # every resume's applied changes (engine/resume_changes.py)
        if build_train:
            self._build_solver()
            self.meter = EpochMeter()
            # Read and compared before anything is written (the logger creates tensorboard/): a refused resume
            # leaves the run folder as it was.
            resumed = self._read_resume(resume, compare=write_run_files) if resume else None
            # The timer first: it decides whether training stops after this step (train.time_limit_s).
            self.register_hooks([TrainTimer(cfg.train.time_limit_s),
                                 EMAHook(self.ema) if self.ema is not None else None, self.meter,
                                 Periodic(cfg.train.checkpoint_period, self._save_mid_epoch)])
            self.logger = MetricsLogger(self.output_dir, enabled=self.is_main and write_run_files,
                                        tensorboard=cfg.train.tensorboard, columns=METRIC_COLUMNS)
            self.checkpoints = CheckpointManager(checkpoints_dir(self.output_dir), metric="val_top1",
                                                 keep_every=cfg.train.keep_every)
            if resumed is not None:
                self._resume(*resumed)
            if self.is_main and write_run_files:
                write_run_config(cfg, self.output_dir / "config.yaml", self.config_changes)

    @property
    def global_iter(self) -> int:
        """Completed optimizer steps (the loop core's `iter`; the name of the checkpoint key)."""
        return self.iter

    @global_iter.setter
    def global_iter(self, value: int) -> None:
        self.iter = value

    # -- building -------------------------------------------------------------------------------------------------
    def _data_root(self) -> Path:
        data = self.cfg.data
        if data.root is not None:
            return Path(data.root)
        syn = data.synthetic
        spec = dict(train_per_class=syn.train_per_class, val_per_class=syn.val_per_class,
                    image_size=syn.image_size, seed=syn.seed)
        root = default_cache_dir(**spec)
        if self.is_main:
            write_image_folder(root, **spec)
        dist_utils.barrier()
        return root

    def _subset(self, size: int, limit: Optional[int], seed: int) -> Optional[List[int]]:
        if limit is None or limit >= size:
            return None
        return sorted(np.random.default_rng(seed).permutation(size)[:limit].tolist())

    def _build_data(self, build_train: bool) -> None:
        data = self.cfg.data
        root = self._data_root()
        common = dict(crop_size=data.crop_size, resize_size=data.resize_size, scale=data.scale, pad=data.pad,
                      flip_prob=data.flip_prob, mean=data.mean, std=data.std)
        val_base = ImageFolderDataset(find_split(root, data.val_split), on_error=data.on_error)
        self.classes = val_base.classes
        val_indices = self._subset(len(val_base), data.val_subset, self.cfg.train.seed + 1)
        val_transform = build_cls_transform(data.recipe, train=False, ten_crop=data.ten_crop, **common)
        self.val_set = TransformedDataset(val_base, val_transform, seed=self.cfg.train.seed, indices=val_indices)
        # Each rank evaluates a strided shard; sums are all-reduced, so no sample is counted twice.
        shard = list(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        eval_batch = max(1, self.cfg.solver.batch_size // self.dist.world_size) * (1 if data.ten_crop else 2)
        self.val_loader = make_loader(torch.utils.data.Subset(self.val_set, shard), batch_size=eval_batch,
                                      workers=data.num_workers, pin_memory=self.device.type == "cuda")
        self.train_set = None
        if not build_train:
            return
        train_base = ImageFolderDataset(find_split(root, data.train_split), on_error=data.on_error)
        if train_base.classes != val_base.classes:
            raise DataError(f"train classes {train_base.source} ({len(train_base.classes)}) differ from val classes "
                            f"{val_base.source} ({len(val_base.classes)}): "
                            f"{sorted(set(train_base.classes) ^ set(val_base.classes))[:5]}")
        train_indices = self._subset(len(train_base), data.train_subset, self.cfg.train.seed)
        train_transform = build_cls_transform(data.recipe, train=True, **common)
        self.train_set = TransformedDataset(train_base, train_transform, seed=self.cfg.train.seed,
                                            indices=train_indices)
        world = self.dist.world_size
        if self.cfg.solver.batch_size % world:
            raise ConfigError(f"config key 'solver.batch_size' ({self.cfg.solver.batch_size}) must be divisible by "
                              f"the number of processes ({world})")
        self.batch_per_rank = self.cfg.solver.batch_size // world
        self.sampler = ResumableSampler(self.train_set, num_replicas=world, rank=self.dist.rank, shuffle=True,
                                        seed=self.cfg.train.seed, drop_last=True)
        self.iters_per_epoch = len(self.sampler) // self.batch_per_rank
        if self.iters_per_epoch < 1:
            raise ConfigError(f"config key 'solver.batch_size' ({self.cfg.solver.batch_size}) exceeds the "
                              f"{len(self.train_set)} training images")

    def _build_model(self) -> None:
        mc, bb = self.cfg.model, self.cfg.model.backbone
        num_classes = mc.num_classes or len(self.classes)
        try:
            model = build_classifier(bb.name, num_classes=num_classes, weights=bb.weights, **bb.options)
        except rb_weights.WeightsError:
            raise  # already names the weights and the fix
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model: {error}") from None
        model.to(self.device)
        if mc.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.dist.enabled and mc.sync_bn:
            model = dist_utils.convert_sync_bn(model, self.device)
        self.model = model  # the plain module: state dicts, EMA, export
        self.train_model: nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if mc.compile:
            self.train_model = torch.compile(self.train_model)
        self.num_classes = num_classes

    def _schedule_iters(self) -> Dict:
        s = self.cfg.solver
        ipe = self.iters_per_epoch
        total = s.max_iter if s.max_iter else s.epochs * ipe
        to_iter = {"epoch": lambda v: int(round(v * ipe)), "iter": lambda v: int(round(v)),
                   "fraction": lambda v: int(round(v * total))}
        return dict(max_iter=total, policy=s.schedule, steps=[to_iter[s.unit](v) for v in s.steps], gamma=s.gamma,
                    warmup_iters=to_iter[s.warmup_unit](s.warmup), warmup_factor=s.warmup_factor, warmup_method=s.warmup_method,
                    min_lr_factor=s.min_lr_factor)

    def _build_solver(self) -> None:
        s = self.cfg.solver
        self.lr = s.scaled_lr()
        self.optimizer = build_optimizer_for(self.model, s, lr=self.lr)
        self.schedule = self._schedule_iters()
        self.max_iter = self.schedule["max_iter"]
        self.epochs = math.ceil(self.max_iter / self.iters_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, **self.schedule)
        self.scaler = grad_scaler(self.device, self.amp)
        self.clip_grad_norm = s.clip_grad_norm
        if self.cfg.ema.enabled:
            self.ema = ModelEMA(self.model, decay=self.cfg.ema.decay, warmup_steps=self.cfg.ema.warmup_steps)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": gathered_rng_state(),  # a collective: every rank calls state_dict() (see _save)
            "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch, "global_iter": self.global_iter,
            "partial": dict(self._partial), "train_seconds": self.train_seconds,
            "config_changes": [c.to_dict() for c in self.config_changes],
            "task": "cls", "arch": self.cfg.model.backbone.name, "num_classes": self.num_classes,
            "classes": list(self.classes),
            "config": to_dict(self.cfg),
        }

    def _read_resume(self, resume: object, *, compare: bool = True):
        """(path, state, changes, fresh) of the checkpoint `resume` names, its model and optimizer states loaded
        (each refuses another shape / optimizer in one line) and its recorded config compared with this run's
        (engine/resume_changes.py: refused changes raise ConfigError; not for --eval-only, which trains nothing);
        None when there is none to resume from."""
        path, note = find_resume_checkpoint(self.output_dir, resume)
        if note and self.is_main:
            print(note, flush=True)
        if path is None:
            return None
        state = load_checkpoint(path, map_location=self.device)
        rb_weights.load_state_dict(self.model, state["model"], source=str(path))
        fresh = fresh_solver_state(self.optimizer, self.scheduler)  # this config's lr, before the checkpoint's
        load_optimizer_state(self.optimizer, state, checkpoint=path)
        at, epoch, inside = int(state["global_iter"]), int(state["epoch"]), int(state["iter_in_epoch"])
        ipe = self.iters_per_epoch
        changes = compare_resume_config(
            state.get("config") if compare else None, self.cfg, task="cls", checkpoint=path, iteration=at,
            total_iters=self.max_iter, position=f"epoch {epoch} + {inside} iterations, iteration {at}",
            min_length={"solver.max_iter": at + 1, "solver.epochs": at // ipe + 1})
        return path, state, changes, fresh

    def _resume(self, path: Path, state: Dict, changes: List, fresh: Dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        apply_solver_changes(self.optimizer, self.scheduler, fresh, changes)
        self.config_changes = recorded_changes(state) + list(changes)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        restore_rng_state(state["rng"], self.dist.rank)
        self.epoch, self.iter_in_epoch = int(state["epoch"]), int(state["iter_in_epoch"])
        self.global_iter = int(state["global_iter"])
        self._partial = dict(state.get("partial") or {})
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.checkpoints.load_best(state)
        self.logger.resume(self.epoch)
        if self.is_main:
            print(f"resumed from {path}: epoch {self.epoch}, iteration {self.global_iter}")
            for change in changes:
                print(change.line(), flush=True)

    def _save(self, metrics: Optional[Dict] = None) -> None:
        state = self.checked_state()
        if self.is_main:
            self.checkpoints.save(state, metrics=metrics, epoch=self.epoch, iteration=self.iter)
        dist_utils.barrier()

    # -- loops ----------------------------------------------------------------------------------------------------
    def _to_device(self, images: torch.Tensor, targets: torch.Tensor):
        non_blocking = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking)
        if self.cfg.model.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=non_blocking)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        s = self.cfg.loss
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=s.label_smoothing)
        if s.l1 or s.l2:
            loss = loss + weight_penalty(self.model, l1=s.l1, l2=s.l2)
        return loss

    # -- the task -----------------------------------------------------------------------------------------------
    def forward(self, batch) -> torch.Tensor:
        return self.train_model(batch[0])

    def losses(self, outputs: torch.Tensor, batch) -> Dict[str, torch.Tensor]:
        return {"loss": self._loss(outputs, batch[1])}

    def step_position(self, index: int) -> str:
        return f"epoch {self.epoch + 1}, iteration {index + 1}"

    def _batches(self, loader):
        for images, targets in loader:
            yield self._to_device(images, targets)

    def train_one_epoch(self) -> Optional[Dict[str, float]]:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch); returns its statistics over all
        ranks: train_loss, train_top1, epoch_time_s, images_per_s, lr. Does not advance self.epoch (fit does).
        None when train.time_limit_s stopped it inside the epoch: a mid-epoch checkpoint is saved, as at
        train.checkpoint_period, and --resume continues from it."""
        self.train_model.train()
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        start_iter = self.iter_in_epoch
        self.sampler.set_start(start_iter * self.batch_per_rank)
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch)
        loader = make_loader(self.train_set, batch_size=self.batch_per_rank, sampler=self.sampler,
                             workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                             drop_last=True, generator=generator)
        self.iters_this_epoch = min(self.iters_per_epoch, self.max_iter - (self.iter - start_iter))
        self.meter.start(self, self._partial, progress=progress_bar(
            self.cfg.train.progress and self.is_main, self.iters_this_epoch, start_iter, self.epoch, self.epochs))
        self.train(self._batches(loader), max_iter=self.iter - start_iter + self.iters_this_epoch)
        if self.stop and self.iter_in_epoch < self.iters_this_epoch:  # train.time_limit_s inside the epoch
            self._partial = self.meter.totals()
            self._save()
            return None
        totals = self.meter.totals()
        elapsed = totals["elapsed"]
        count = max(1.0, totals["count"])
        self._partial = {}
        self.iter_in_epoch = 0
        return {"train_loss": totals["loss_sum"] / count, "train_top1": 100.0 * totals["correct"] / count,
                "epoch_time_s": elapsed, "images_per_s": totals["count"] / max(1e-9, elapsed),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _save_mid_epoch(self) -> None:
        """train.checkpoint_period: a checkpoint inside the epoch (the epoch's end saves anyway). Rank 0 alone writes
        it: it must carry every rank's running sums, not only its own."""
        if self.iter_in_epoch < self.iters_this_epoch:
            self._partial = self.meter.totals()
            self._save()

    def evaluate(self, model: Optional[nn.Module] = None) -> Dict[str, float]:
        """Top-1/top-5 (percent), mean loss and image count over the val split, summed over all ranks.

        Evaluates the EMA weights when EMA is enabled. Ten-crop batches [N, 10, 3, h, w] average the crops' logits.
        """
        model = model if model is not None else (self.ema.module if self.ema is not None else self.model)
        metrics = inference_on_dataset(model, self.val_loader, ClassificationEvaluator(), device=self.device,
                                       amp=self.amp, channels_last=self.cfg.model.channels_last)
        return {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"],
                "val_count": metrics["count"]}

    def fit(self) -> Dict[str, float]:
        """Train to the configured length (or until train.time_limit_s), evaluating, logging and checkpointing every
        epoch; returns the last epoch's row ({} when stopped by the time limit inside the first epoch)."""
        cfg = self.cfg
        if self.is_main:
            print(f"training {cfg.model.backbone.name} on {len(self.train_set)} images ({len(self.classes)} classes), "
                  f"{self.epochs} epochs x {self.iters_per_epoch} it, batch {cfg.solver.batch_size} "
                  f"({self.dist.world_size} process(es)), lr {self.lr:g}, device {self.device}, "
                  f"output {self.output_dir}", flush=True)
            print(f"amp: {self.amp} ({self.amp_reason})", flush=True)
        row: Dict[str, float] = {}
        with self.catch_signals():  # SIGINT / SIGTERM: stop after the step (or this epoch's end), save, say so
            while self.global_iter < self.max_iter:
                stats = self.train_one_epoch()
                if stats is None:
                    break
                self.epoch += 1
                last = self.global_iter >= self.max_iter
                val = self.evaluate() if (last or self.epoch % max(1, cfg.train.eval_period) == 0) else {}
                row = {"epoch": self.epoch, "iter": self.global_iter, **stats, **val}
                self.logger.log(row)
                self._save(metrics=row)
                if self.is_main:
                    plot_error_curves(self.logger.rows, self.output_dir / CURVES_NAME,
                                      title=f"{cfg.model.backbone.name}: train (dashed) / val (bold) error")
                    print(epoch_line(row, self.epochs), flush=True)
                if self.check_signals():  # all ranks: a signal during evaluation stops here
                    break
        if self.stop_reason and self.global_iter < self.max_iter and self.is_main:
            print(early_stop_line(self, self.max_iter, f" ({self.epoch} epochs + {self.iter_in_epoch} iterations)"),
                  flush=True)
        self.logger.close()
        raise_for_signal(self, self.max_iter)
        return row

    def export_backbone(self, path: str, *, metrics: Dict[str, float]) -> Path:
        """Backbone-only weights (EMA when kept: what evaluate() measured) named as rb.build_backbone(arch) holds
        them, with WeightsMetadata of this training (arch, RGB, data.mean/std, stride placement, classes) and its
        results (val_top1/top5, epochs, data), so a detector adopts the normalisation the backbone learned with."""
        model = self.ema.module if self.ema is not None else self.model
        extra = {"epochs": self.epoch, "iterations": self.global_iter, "data": self.cfg.data.root or "synthetic"}
        extra.update({k: f"{metrics[k]:.2f}" for k in ("val_top1", "val_top5") if k in metrics})
        meta = rb_weights.WeightsMetadata.from_train_cls(to_dict(self.cfg), num_classes=self.num_classes, extra=extra)
        return rb_weights.save(dist_utils.unwrap(model).backbone, path, metadata=meta.to_dict())



