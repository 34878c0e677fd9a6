"""Iteration-based detection training (Faster / Mask R-CNN): SGD + warm-up + steps, AMP, DDP, periodic COCO eval,
atomic checkpoints with resume (OUTPUT/checkpoints/last.pt, the layout and resume rule of classification too:
engine/checkpoint.py), tqdm, metrics.csv / TensorBoard, loss-curve PNG, final eval.json (12 COCO stats and AP / AP50
per category for each iou type), the final detections (inference/coco_instances_results.json) and
checkpoints/best.pt by AP (with train.eval_period; see det_reports.py).

    trainer = DetTrainer(cfg, resume=True)       # cfg: config.det.DetTrainConfig; resume may be a checkpoint path
    result = trainer.fit()                       # {"bbox": {"AP": ..}, "segm": {...}} of the final evaluation

The step, its divergence checks and the hook calls are the loop core's (engine/loop.py), shared with
classification; this file says what detection trains on, logs, saves and evaluates.
"""
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from ..config import ConfigError, to_dict
from ..config.det import DetTrainConfig, default_iou_types
from ..data.det_datasets import build_det_dataset, check_data_paths
from ..data.det_transforms import build_det_transforms, collate_detection
from ..data.resizable import check_coco_images_resizable
from ..io.outputs import register_owned_run
from ..detection.backbone_weights import refuse_untrainable_backbone
from ..detection.builder import build_detector
from .checkpoint import (BEST, LAST, CHECKPOINTS, CheckpointManager, checkpoints_dir, find_resume_checkpoint,
                         gathered_rng_state, load_checkpoint, load_matching_state, load_optimizer_state,
                         restore_rng_state)
from .data_loading import ResumableSampler, SampleSeeded, make_loader
from .det_curves import plot_det_curves
from .det_reports import RESULTS_FILE, best_line
from .device import grad_scaler, resolve_amp
from .metrics_log import MetricsLogger
from .optim import build_optimizer_for, make_lr_lambda
from .outputs import write_json_atomic
from .setup import setup_run
from .hooks import LossWindow, Periodic, TrainTimer, early_stop_line, raise_for_signal, stopped_early
from .loop import Trainer
from .resume_changes import (apply_solver_changes, compare_resume_config, fresh_solver_state, recorded_changes,
                             write_run_config)
from .tool_errors import TrainingDiverged  # noqa: F401 (also imported from here)

# What a run writes into its output folder (train_det --overwrite deletes these and nothing else); LAST and BEST:
# OUTPUT/last.pt and best.pt of runs written before checkpoints/ (read by --resume, never written again).
RUN_FILES = ("config.yaml", CHECKPOINTS, LAST, BEST, "metrics.csv", "metrics.jsonl", "curves.png", "tensorboard",
             "eval.json", RESULTS_FILE.parts[0])


class DetTrainer(Trainer):
    """The detection task on the loop core (engine/loop.py): iterations of run_step on an endless loader, with
    hooks for the loss log, checkpoints, periodic evaluation and the time limit; `iter` (alias iteration) counts
    optimizer steps. eval_only builds the model and the val data only (no optimizer, no run-folder writes); with a
    `checkpoint`, the model is the one it records (evaluation.inference.load_detector), cfg gives data and test.
    resume: False, True (engine.checkpoint.find_resume_checkpoint) or a checkpoint path."""

    def __init__(self, cfg: DetTrainConfig, *, resume: Union[bool, str] = False, eval_only: bool = False,
                 checkpoint: str = ""):
        self.cfg = cfg
        if not eval_only:
            refuse_untrainable_backbone(cfg.model)  # before any data is read: a config mistake, exit 2
        check_data_paths({"val": cfg.data.val} if eval_only else {"train": cfg.data.train, "val": cfg.data.val})
        tcfg = cfg.train
        super().__init__(setup_run(tcfg, fixed_input_size=False))
        if tcfg.deterministic and self.device.type == "cuda":
            raise ConfigError("train.deterministic=true needs train.device=cpu for detection: torchvision's "
                              "RoIAlign backward has no deterministic CUDA kernel")
        self.eval_amp, self.eval_amp_reason = (resolve_amp(cfg.test.amp, self.device) if cfg.test.amp
                                               else (self.amp, self.amp_reason))
        self.output = Path(tcfg.output_dir)
        register_owned_run(self.output)  # this trainer writes its run's files, the last.pt it resumed from too
        self.checkpoint_path = checkpoints_dir(self.output) / LAST
        loaded = self._load_detector(checkpoint) if eval_only and checkpoint else None
        self.iou_types = default_iou_types(cfg)
        self.world = self.dist.world_size
        if cfg.solver.batch_size % self.world:
            raise ValueError(f"solver.batch_size={cfg.solver.batch_size} must be divisible by the number of "
                             f"processes ({self.world})")
        self.val_set = build_det_dataset(cfg.data.val, split="val", transforms=build_det_transforms(train=False),
                                         cache_images=cfg.data.cache_images)
        self.train_set = None
        if not eval_only:
            self.train_set = build_det_dataset(cfg.data.train, split="train", cache_images=cfg.data.cache_images,
                                               transforms=build_det_transforms(train=True,
                                                                               flip_prob=cfg.data.flip_prob))
            self._check_classes(self.train_set, "train")
        self._check_classes(self.val_set, "val")
        # The ground truth COCOeval will score against, type-checked now rather than after training (exit 2).
        from ..evaluation.coco_checks import check_ground_truth

        check_ground_truth(self.val_set.coco.dataset, source=str(self.val_set.ann_file), iou_types=self.iou_types)
        icfg = cfg.model.input  # a 10000x50 strip would shrink under a pixel across and fail inside interpolate
        for split in (self.train_set, self.val_set):
            if split is not None:
                check_coco_images_resizable(split.coco.dataset.get("images", []), source=split.ann_file,
                                            min_size=icfg.min_size if split is self.train_set else icfg.min_size[-1],
                                            max_size=icfg.max_size)
        self.model = loaded.model if loaded is not None else build_detector(cfg.model).to(self.device)
        # The dumped config.yaml names the input normalisation actually used (adopted from the backbone weights).
        t, icfg = self.model.transform, cfg.model.input
        icfg.image_mean, icfg.image_std, icfg.format = tuple(t.image_mean), tuple(t.image_std), t.input_format
        if not eval_only:
            self._build_solver()
        # best.pt: the first evaluated iou type's AP
        self.checkpoints = CheckpointManager(checkpoints_dir(self.output), metric=f"{self.iou_types[0]}_AP",
                                             keep_every=tcfg.keep_every, keep_unit="iter")  # iter_N.pt
        self.last_results: List[Dict] = []  # the detections of the latest evaluation (rank 0)
        self.config_changes: List = []  # every resume's applied changes (engine/resume_changes.py)
        # The checkpoint is read and its config compared before anything is written (the logger creates
        # tensorboard/): a refused resume leaves the run folder as it was.
        resumed = self._read_resume(resume) if resume and not eval_only else None
        # Evaluation of a checkpoint leaves the run folder alone (the tool writes its report beside the checkpoint).
        self.label_to_category = dict(self.val_set.label_to_category)  # evaluation: the checkpoint's (below)
        self.logger = MetricsLogger(self.output, enabled=self.dist.is_main and not eval_only, index_key="iter",
                                    tensorboard=tcfg.tensorboard)
        if loaded is not None:  # score each label as the category it was trained on
            self.label_to_category, note = loaded.label_mapping(self.val_set.categories)
            if note and self.dist.is_main:
                print(f"note: {note}", flush=True)
        elif resumed is not None:
            self._load(*resumed)
        if self.dist.is_main and not eval_only:
            self.output.mkdir(parents=True, exist_ok=True)
            write_run_config(cfg, self.output / "config.yaml", self.config_changes)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    @property
    def iteration(self) -> int:
        """Completed optimizer steps (the loop core's `iter`; the name of the checkpoint key)."""
        return self.iter

    def _build_solver(self) -> None:
        s = self.cfg.solver
        self.optimizer = build_optimizer_for(self.model, s, lr=s.scaled_lr())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(
            max_iter=s.max_iter, policy=s.schedule, steps=s.steps, gamma=s.gamma, warmup_iters=s.warmup,
            warmup_factor=s.warmup_factor, warmup_method=s.warmup_method, min_lr_factor=s.min_lr_factor))
        self.scaler = grad_scaler(self.device, self.amp)
        self.clip_grad_norm = s.clip_grad_norm
        tcfg = self.cfg.train
        # Order matters: the timer decides whether training stops after this step, which the others read.
        self.register_hooks([
            TrainTimer(tcfg.time_limit_s),
            LossWindow(tcfg.log_period, s.max_iter, progress=tcfg.progress and self.is_main),
            Periodic(tcfg.checkpoint_period, lambda: None if self.done() else self.save()),
            Periodic(tcfg.eval_period, lambda: None if self.done() else self._eval_and_log())])

    def done(self) -> bool:
        """Training ends after this step: the configured length, or a hook stopped it (train.time_limit_s)."""
        return self.stop or self.iter >= self.cfg.solver.max_iter

    def _check_classes(self, dataset, split: str) -> None:
        if dataset.num_classes != self.cfg.model.num_classes:
            raise ValueError(f"model.num_classes={self.cfg.model.num_classes} but data.{split} "
                             f"({dataset.ann_file}) has {dataset.num_classes} categories")

    def _load_detector(self, checkpoint: str):
        """The model of `checkpoint` for evaluation, from the config it records (its model section replaces this
        config's, whose data and test sections stay); legacy checkpoints without one use this config."""
        from ..evaluation.inference import load_detector

        loaded = load_detector(checkpoint, self.cfg, device=self.device, config_source="the config")
        if loaded.note and self.dist.is_main:
            print(loaded.note, flush=True)
        self.cfg.model = loaded.cfg.model
        return loaded

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {"task": "det", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "iteration": self.iter, "train_seconds": self.train_seconds,
                "config_changes": [c.to_dict() for c in self.config_changes],
                "rng": gathered_rng_state(),  # a collective: every rank calls state_dict()
                **self.checkpoints.state(),
                "config": to_dict(self.cfg),  # the resolved config: the model is rebuilt from it alone
                "label_to_category": dict(self.val_set.label_to_category),
                "categories": [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))}
                               for c in self.val_set.categories]}

    def save(self) -> Optional[Path]:
        """Write OUTPUT/checkpoints/last.pt (rank 0) once the weights are checked finite; every rank must call it
        (the check and the RNG states are gathered from every rank)."""
        state = self.checked_state()
        if not self.dist.is_main:
            return None
        self.checkpoints.save(state, iteration=self.iter)
        return self.checkpoint_path

    def _read_resume(self, resume: Union[bool, str]):
        """(path, state, changes, fresh) of the checkpoint --resume names, its model and optimizer states loaded
        (each refuses another shape / optimizer in one line) and its recorded config compared with this run's
        (engine/resume_changes.py: refused changes raise ConfigError); None when there is none to resume from."""
        path, note = find_resume_checkpoint(self.output, resume)
        if note and self.dist.is_main:
            print(note, flush=True)
        if path is None:
            return None
        state = load_checkpoint(path, map_location=self.device)
        load_matching_state(self.model, state["model"], checkpoint=path, model_source="the config")
        fresh = fresh_solver_state(self.optimizer, self.scheduler)  # this config's lr, before the checkpoint's
        load_optimizer_state(self.optimizer, state, checkpoint=path)
        at = int(state["iteration"])
        changes = compare_resume_config(state.get("config"), self.cfg, task="det", checkpoint=path, iteration=at,
                                        total_iters=self.cfg.solver.max_iter, position=f"iteration {at}")
        return path, state, changes, fresh

    def _load(self, path, state: Dict, changes: List, fresh: Dict) -> None:
        """Resume from a checkpoint of this tool (legacy OUTPUT/last.pt files too: a single RNG dict, no task), with
        this run's applied config changes made true and recorded."""
        self.scheduler.load_state_dict(state["scheduler"])
        apply_solver_changes(self.optimizer, self.scheduler, fresh, changes)
        self.config_changes = recorded_changes(state) + list(changes)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iteration"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if "rng" in state:
            restore_rng_state(state["rng"], self.dist.rank)
        self.checkpoints.load_best(state)
        self.logger.resume(self.iter)
        if self.dist.is_main:  # train_cls's wording
            print(f"resumed from {path}: iteration {self.iter}", flush=True)
            for change in changes:
                print(change.line(), flush=True)

    # -- training ---------------------------------------------------------------------------------------------
    def data_iter(self) -> Iterator:
        """This rank's endless stream of training batches (images, targets) on the device, from iteration self.iter
        on (engine/data_loading.py: data order and augmentation depend only on (seed, epoch, sample index))."""
        per_rank = self.cfg.solver.batch_size // self.world
        seed = self.cfg.train.seed
        sampler = ResumableSampler(self.train_set, num_replicas=self.world, rank=self.dist.rank, seed=seed,
                                   endless=True)
        sampler.set_start(self.iter * per_rank)
        epoch = self.iter * per_rank // sampler.num_samples
        loader = make_loader(SampleSeeded(self.train_set, seed=seed), batch_size=per_rank, sampler=sampler,
                             workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                             generator=torch.Generator().manual_seed(seed * 1000 + epoch),
                             collate_fn=collate_detection)
        for images, targets in loader:
            yield ([im.to(self.device, non_blocking=True) for im in images],
                   [{k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                     for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets])

    # -- the task ---------------------------------------------------------------------------------------------
    def forward(self, batch) -> Dict[str, torch.Tensor]:
        return self.train_model(*batch)  # torchvision detectors return their losses in training mode

    def losses(self, outputs: Dict[str, torch.Tensor], batch) -> Dict[str, torch.Tensor]:
        return outputs

    def step_position(self, index: int) -> str:
        return f"iteration {index}"  # counted from 0: the checkpoint kept before step N holds N iterations

    def fit(self) -> Dict[str, Dict[str, float]]:
        """Train to solver.max_iter (or train.time_limit_s), save, evaluate; returns the final evaluation."""
        max_iter = self.cfg.solver.max_iter
        if self.iter < max_iter:
            with self.catch_signals():  # SIGINT / SIGTERM: stop after the step, save, say so (below)
                self.train(self.data_iter(), max_iter)
        self.save()
        early = stopped_early(self, max_iter)
        if early and self.dist.is_main:
            print(early_stop_line(self, max_iter), flush=True)
        if early and early["reason"] != "time_limit":  # a signal: no evaluation, the user wants the process to end
            if self.dist.is_main:
                write_json_atomic(self.output / "eval.json", self._summary({}, early))
            self.logger.close()
            raise_for_signal(self, max_iter)
        result = self._eval_and_log(final=True, early=early)
        self.logger.close()
        return result

    # -- evaluation -------------------------------------------------------------------------------------------
    def _val_batches(self) -> Iterator[List]:
        """This rank's share of the evaluated val images (the first test.max_images, strided over ranks) in batches
        of test.ims_per_batch: lists of (image, target)."""
        ids = self.val_set.ids[: self.cfg.test.max_images] if self.cfg.test.max_images else self.val_set.ids
        index = {image_id: i for i, image_id in enumerate(self.val_set.ids)}
        mine = ids[self.dist.rank::self.world]
        batch = max(1, self.cfg.test.ims_per_batch)
        for start in range(0, len(mine), batch):
            yield [self.val_set[index[image_id]] for image_id in mine[start:start + batch]]

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """COCO stats of the current model on the val set through evaluation.inference.inference_on_dataset:
        {"bbox": {"AP": .., ..}, "segm": {..}, "eval_seconds", "amp" (the autocast precision used: test.amp, or
        train.amp when test.amp is null), "max_dets", "ap_unit", "per_category"} on rank 0, {} on the others."""
        from ..evaluation.coco_evaluator import COCOEvaluator, restrict_ground_truth
        from ..evaluation.inference import inference_on_dataset

        started = time.perf_counter()
        test = self.cfg.test
        ids = self.val_set.ids[: test.max_images] if test.max_images else self.val_set.ids
        evaluator = COCOEvaluator(restrict_ground_truth(self.val_set.coco.dataset, ids), self.label_to_category,
                                  iou_types=self.iou_types, mask_threshold=test.mask_threshold,
                                  max_dets=test.max_dets, backend=test.backend, gt_source=str(self.val_set.ann_file))
        out = inference_on_dataset(self.model, self._val_batches(), evaluator, device=self.device, amp=self.eval_amp)
        if self.dist.is_main:
            out["eval_seconds"] = round(time.perf_counter() - started, 2)
            out["amp"] = self.eval_amp  # the precision these numbers were measured at
            self.last_results = evaluator.detections
        return out

    def _summary(self, result: Dict, early: Optional[Dict]) -> Dict:
        """eval.json: the final evaluation, where the run stands, and what is not final about it."""
        summary = dict(result, iteration=self.iteration, train_seconds=round(self.train_seconds, 1))
        if early:  # a resumable run stopped before solver.max_iter: these numbers are not the run's final ones
            summary["stopped_early"] = early
        if self.config_changes:
            summary["config_changes"] = [c.to_dict() for c in self.config_changes]
        return summary

    def _eval_and_log(self, final: bool = False, early: Optional[Dict] = None) -> Dict:
        result = self.evaluate()
        state = self.checked_state()  # on every rank (it gathers their RNG states), for best.pt below
        if self.dist.is_main:
            row = {"iter": self.iter, "time_s": round(self.train_seconds, 2)}
            for t in self.iou_types:
                row[f"{t}_AP"] = result[t].get("AP")
                if "AP50" in result[t]:
                    row[f"{t}_AP50"] = result[t]["AP50"]
            self.logger.log(row)
            plot_det_curves(self.logger.rows, self.output / "curves.png")
            best = self.checkpoints
            metrics = {best.metric: (result.get(self.iou_types[0]) or {}).get("AP")}
            if (self.cfg.train.eval_period or best.best is not None) and best.is_better(metrics[best.metric]):
                best.save(state, metrics=metrics, iteration=self.iter)  # last.pt too: a resumed run knows this best
                print(best_line(best, self.iou_types[0]), flush=True)
            if final:
                write_json_atomic(self.output / RESULTS_FILE, self.last_results, indent=None)
                summary = dict(self._summary(result, early), coco_results=str(RESULTS_FILE))
                if best.best is not None:
                    summary["best"] = {"checkpoint": f"{CHECKPOINTS}/{BEST}", **best.state()}
                write_json_atomic(self.output / "eval.json", summary)
        self.model.train()
        return result
