"""Classification training on the one loop (engine/loop.py): data -> model -> SGD/schedule -> metrics/checkpoints,
the same code on CPU and GPUs.

    trainer = ClsTrainer(cfg, resume=True)   # cfg: ClsConfig
    trainer.fit()                           # -> the last epoch's metrics row
    trainer.evaluate()                      # -> {"val_top1", "val_top5", "val_loss", "val_count"}

Training is a stream of iterations (the endless ResumableSampler); epochs are a hook (cls_epoch.EpochBoundary) that
writes the one metrics row per epoch, evaluates and checkpoints. DDP comes from torchrun's environment; only rank 0
writes. A resumed run is bit-identical to an uninterrupted one in deterministic mode (same device and thread
count): the checkpoint holds every state and the data order and augmentation depend only on (seed, epoch, sample
index).
"""
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as rb_weights
from ..backbones import build_classifier
from ..config import ConfigError, to_dict
from ..config.cls import ClsConfig
from ..evaluation.classification import ClassificationEvaluator
from ..evaluation.inference import inference_on_dataset
from ..io.outputs import register_owned_run
from ..utils import comm
from ..utils.amp import grad_scaler
from .cls_data import build_split, check_same_classes, data_root, val_loader
from .cls_epoch import EpochBoundary, end_of_epoch
from .data_loading import EpochKeyed, ResumableSampler, make_loader
from .ema import ModelEMA
from .loop import Trainer
from .metrics_log import CURVES_NAME
from .optim import build_optimizer_for, build_scheduler, schedule_in_iters, weight_penalty
from .setup import setup_run

# What a run writes into its output folder (train_cls --overwrite deletes these and nothing else).
RUN_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", CURVES_NAME, "tensorboard", "checkpoints")
METRIC_COLUMNS = ("epoch", "iter", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr",
                  "epoch_time_s", "images_per_s")


class ClsTrainer(Trainer):
    """The classification task: the model, the data, the loss and the evaluation; the run is the base Trainer's."""

    task, best_metric = "cls", "val_top1"
    metrics_format = {"columns": METRIC_COLUMNS}

    def __init__(self, cfg: ClsConfig, *, resume: object = False, build_train: bool = True,
                 write_run_files: bool = True):
        """resume: False, True (the last checkpoint of train.output_dir, if any) or a checkpoint path.
        build_train=False: model and val data only (evaluation, export). write_run_files=False (evaluation of a
        run): config.yaml and the metrics files of the run stay as they are."""
        super().__init__(setup_run(cfg.train, fixed_input_size=True))
        self.cfg = cfg
        self.output_dir = Path(cfg.train.output_dir)
        register_owned_run(self.output_dir)  # this trainer writes its run's files, the last.pt it resumed from too
        self._build_data(build_train)
        self._build_model()
        self.train_model = self.model
        if build_train:
            self._build_solver()
            self.setup_run(resume, write_run_files=write_run_files, compare=write_run_files)

    # -- building -------------------------------------------------------------------------------------------------
    def _build_data(self, build_train: bool) -> None:
        data, seed = self.cfg.data, self.cfg.train.seed
        root = data_root(self.cfg, is_main=self.is_main)
        val_base, self.val_set = build_split(self.cfg, root, data.val_split, limit=data.val_subset, seed=seed + 1,
                                             train=False)
        self.classes = val_base.classes
        self.val_loader = val_loader(self.cfg, self.val_set, rank=self.dist.rank, world=self.dist.world_size,
                                     device=self.device)
        self.train_set = None
        if not build_train:
            return
        train_base, self.train_set = build_split(self.cfg, root, data.train_split, limit=data.train_subset,
                                                 seed=seed, train=True)
        check_same_classes(train_base, val_base)
        per_rank = self.batch_per_rank
        self.sampler = ResumableSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        seed=seed, endless=True)
        self.iters_per_epoch = self.sampler.num_samples // per_rank
        if self.iters_per_epoch < 1:
            raise ConfigError(f"config key 'solver.batch_size' ({self.cfg.solver.batch_size}) exceeds the "
                              f"{len(self.train_set)} training images")
        self.sampler.epoch_samples = self.iters_per_epoch * per_rank  # each epoch's last partial batch is dropped

    def _build_model(self) -> None:
        mc, bb = self.cfg.model, self.cfg.model.backbone
        self.num_classes = mc.num_classes or len(self.classes)
        try:
            model = build_classifier(bb.name, num_classes=self.num_classes, weights=bb.weights, **bb.options)
        except rb_weights.WeightsError:
            raise  # already names the weights and the fix
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model: {error}") from None
        self.model = model.to(self.device)
        if mc.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _build_solver(self) -> None:
        s = self.cfg.solver
        self.lr = s.scaled_lr()
        self.optimizer = build_optimizer_for(self.model, s, lr=self.lr)
        self.schedule = schedule_in_iters(s, self.iters_per_epoch)
        self.max_iter = self.schedule["max_iter"]
        self.scheduler = build_scheduler(self.optimizer, **self.schedule)
        self.scaler = grad_scaler(self.device, self.amp)
        self.clip_grad_norm = s.clip_grad_norm
        if self.cfg.ema.enabled:
            self.ema = ModelEMA(self.model, decay=self.cfg.ema.decay, warmup_steps=self.cfg.ema.warmup_steps)

    def task_hooks(self) -> List:
        tcfg = self.cfg.train
        self.epochs_hook = EpochBoundary(self.iters_per_epoch, end_of_epoch, device=self.device, is_main=self.is_main,
                                         progress=tcfg.progress, log_period=tcfg.log_period)
        return [self.epochs_hook]

    @property
    def epoch(self) -> int:
        """Completed epochs (the last one counts once training reached its length)."""
        ipe = self.iters_per_epoch
        return math.ceil(self.iter / ipe) if self.iter >= self.max_iter else self.iter // ipe

    def extras(self) -> Dict:
        return {"arch": self.cfg.model.backbone.name, "num_classes": self.num_classes, "classes": list(self.classes),
                "epoch": self.epoch}

    # -- the task -------------------------------------------------------------------------------------------------
    def data_iter(self) -> Iterator:
        """This rank's endless stream of (images, targets) on the device from iteration self.iter on; epoch e's
        batches and augmentation depend only on (seed, e, sample index) (engine/data_loading.py)."""
        self.sampler.set_start(self.iter * self.batch_per_rank)
        epoch = self.iter // self.iters_per_epoch
        loader = make_loader(EpochKeyed(self.train_set), batch_size=self.batch_per_rank, sampler=self.sampler,
                             workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                             generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch))
        non_blocking = self.device.type == "cuda"
        for images, targets in loader:
            images = images.to(self.device, non_blocking=non_blocking)
            if self.cfg.model.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets.to(self.device, non_blocking=non_blocking)

    def forward(self, batch) -> torch.Tensor:
        return self.train_model(batch[0])

    def losses(self, outputs: torch.Tensor, batch) -> Dict[str, torch.Tensor]:
        s = self.cfg.loss
        loss = F.cross_entropy(outputs.float(), batch[1], label_smoothing=s.label_smoothing)
        if s.l1 or s.l2:
            loss = loss + weight_penalty(self.model, l1=s.l1, l2=s.l2)
        return {"loss": loss}

    def step_position(self, index: int) -> str:
        return f"epoch {index // self.iters_per_epoch + 1}, iteration {index + 1}"

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
        """Train to the configured length (or until train.time_limit_s); returns the last epoch's row ({} when no
        epoch ended in this process)."""
        if self.is_main:
            print(f"training {self.cfg.model.backbone.name} on {len(self.train_set)} images ({len(self.classes)} "
                  f"classes), {math.ceil(self.max_iter / self.iters_per_epoch)} epochs x {self.iters_per_epoch} it, "
                  f"batch {self.cfg.solver.batch_size} ({self.dist.world_size} process(es)), lr {self.lr:g}, "
                  f"device {self.device}, output {self.output_dir}\namp: {self.amp} ({self.amp_reason})", flush=True)
        return super().fit()

    def after_fit(self, early) -> Dict[str, float]:
        return self.epochs_hook.last_row

    def export_backbone(self, path: str, *, metrics: Dict[str, float], epochs: Optional[int] = None) -> Path:
        """Backbone-only weights (EMA when kept: what evaluate() measured) named as rb.build_backbone(arch) holds
        them, with WeightsMetadata of this training (arch, RGB, data.mean/std, stride placement, classes) and its
        results (val_top1/top5, epochs, data), so a detector adopts the normalisation the backbone learned with."""
        model = self.ema.module if self.ema is not None else self.model
        extra = {"epochs": self.epoch if epochs is None else epochs, "iterations": self.iter,
                 "data": self.cfg.data.root or "synthetic"}
        extra.update({k: f"{metrics[k]:.2f}" for k in ("val_top1", "val_top5") if k in metrics})
        meta = rb_weights.WeightsMetadata.from_train_cls(to_dict(self.cfg), num_classes=self.num_classes, extra=extra)
        return rb_weights.save(comm.unwrap(model).backbone, path, metadata=meta.to_dict())
