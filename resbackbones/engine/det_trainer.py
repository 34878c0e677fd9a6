"""Detection training (Faster / Mask R-CNN) on the one loop (engine/loop.py): what detection trains on, logs and
evaluates; the run (checkpoints, resume, DDP, time limit, signals) is the base Trainer's. Writes metrics.csv /
TensorBoard, the loss-curve PNG, the final eval.json (12 COCO stats and AP / AP50 per category for each iou type),
the final detections (inference/coco_instances_results.json) and best.pt by AP (train.eval_period; det_reports.py).

    trainer = DetTrainer(cfg, resume=True)       # cfg: config.det.DetTrainConfig; resume may be a checkpoint path
    result = trainer.fit()                       # {"bbox": {"AP": ..}, "segm": {...}} of the final evaluation
"""
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch
from torch.utils.data import Subset

from ..config import ConfigError
from ..config.det import DetTrainConfig, default_iou_types
from ..data.det_transforms import collate_detection
from ..data.loaders import GroupedBatchSampler, aspect_ratio_groups, build_det_test_loader
from ..detection.backbone_weights import refuse_untrainable_backbone
from ..detection.builder import build_detector
from ..evaluation.coco_evaluator import COCOEvaluator, restrict_ground_truth
from ..evaluation.inference import inference_on_dataset, load_detector
from ..io.outputs import register_owned_run
from ..utils import comm
from ..utils.amp import grad_scaler, resolve_amp
from .checkpoint import BEST, CHECKPOINTS, LAST
from .data_loading import ResumableSampler, SampleSeeded, make_loader
from .det_curves import plot_det_curves
from .det_data import build_det_data
from .det_reports import RESULTS_FILE, best_line, eval_summary
from .hooks import EvalHook, MetricsWriter
from .loop import Trainer
from .optim import build_optimizer_for, make_lr_lambda
from .outputs import write_json_atomic
from .setup import setup_run

# What a run writes into its output folder (train_det --overwrite deletes these and nothing else); LAST and BEST:
# OUTPUT/last.pt and best.pt of runs written before checkpoints/ (read by --resume, never written again).
RUN_FILES = ("config.yaml", CHECKPOINTS, LAST, BEST, "metrics.csv", "metrics.jsonl", "curves.png", "tensorboard",
             "eval.json", RESULTS_FILE.parts[0])


class DetTrainer(Trainer):
    """The detection task: model, data, losses, evaluation. eval_only builds the model and the val data only (no
    optimizer, no run-folder writes); with a `checkpoint`, the model is the one it records
    (evaluation.inference.load_detector), cfg gives data and test. resume: False, True (the last checkpoint of
    train.output_dir) or a checkpoint path."""

    task, metrics_format = "det", {"index_key": "iter"}

    def __init__(self, cfg: DetTrainConfig, *, resume: Union[bool, str] = False, eval_only: bool = False,
                 checkpoint: str = ""):
        self.cfg = cfg
        if not eval_only:
            refuse_untrainable_backbone(cfg.model)  # before any data is read: a config mistake, exit 2
        super().__init__(setup_run(cfg.train, fixed_input_size=False))
        if cfg.train.deterministic and self.device.type == "cuda":
            raise ConfigError("train.deterministic=true needs train.device=cpu for detection: torchvision's "
                              "RoIAlign backward has no deterministic CUDA kernel")
        self.eval_amp, self.eval_amp_reason = (resolve_amp(cfg.test.amp, self.device) if cfg.test.amp
                                               else (self.amp, self.amp_reason))
        self.output_dir = Path(cfg.train.output_dir)
        register_owned_run(self.output_dir)  # this trainer writes its run's files, the last.pt it resumed from too
        loaded = self._load_detector(checkpoint) if eval_only and checkpoint else None
        self.iou_types = default_iou_types(cfg)
        self.best_metric = f"{self.iou_types[0]}_AP"  # best.pt: the first evaluated iou type's AP
        self.max_iter = cfg.solver.max_iter
        self.train_set, self.val_set = build_det_data(cfg, eval_only=eval_only, iou_types=self.iou_types)
        self.model = loaded.model if loaded is not None else build_detector(cfg.model).to(self.device)
        self.train_model = self.model
        # The dumped config.yaml names the input normalisation actually used (adopted from the backbone weights).
        t, icfg = self.model.transform, cfg.model.input
        icfg.image_mean, icfg.image_std, icfg.format = tuple(t.image_mean), tuple(t.image_std), t.input_format
        self.last_results: List[Dict] = []  # the detections of the latest evaluation (rank 0)
        self.label_to_category = dict(self.val_set.label_to_category)  # evaluation: the checkpoint's (below)
        if loaded is not None:  # score each label as the category it was trained on
            self.label_to_category, note = loaded.label_mapping(self.val_set.categories)
            if note and self.is_main:
                print(f"note: {note}", flush=True)
        if not eval_only:
            s = cfg.solver
            self.optimizer = build_optimizer_for(self.model, s, lr=s.scaled_lr())
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(
                max_iter=s.max_iter, policy=s.schedule, steps=s.steps, gamma=s.gamma, warmup_iters=s.warmup,
                warmup_factor=s.warmup_factor, warmup_method=s.warmup_method, min_lr_factor=s.min_lr_factor))
            self.scaler = grad_scaler(self.device, self.amp)
            self.clip_grad_norm = s.clip_grad_norm
            self.setup_run(resume)

    def task_hooks(self) -> List:
        tcfg = self.cfg.train
        return [MetricsWriter(tcfg.log_period, self.max_iter, progress=tcfg.progress and self.is_main)]

    def build_hooks(self) -> List:
        period = self.period_iterations(self.cfg.train.eval_period)
        return [*super().build_hooks(), EvalHook(period, self._eval_and_log)]

    def extras(self) -> Dict:
        return {"label_to_category": dict(self.val_set.label_to_category),
                "categories": [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))}
                               for c in self.val_set.categories]}

    def _load_detector(self, checkpoint: str):
        """The model of `checkpoint` for evaluation, from the config it records (its model section replaces this
        config's, whose data and test sections stay); legacy checkpoints without one use this config."""
        loaded = load_detector(checkpoint, self.cfg, device=self.device, config_source="the config")
        if loaded.note and self.is_main:
            print(loaded.note, flush=True)
        self.cfg.model = loaded.cfg.model
        return loaded

    # -- the task ---------------------------------------------------------------------------------------------
    def data_iter(self) -> Iterator:
        """This rank's endless stream of training batches (images, targets) on the device, from iteration self.iter
        on (engine/data_loading.py: data order and augmentation depend only on (seed, epoch, sample index))."""
        per_rank, seed = self.batch_per_rank, self.cfg.train.seed
        sampler = ResumableSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank, seed=seed,
                                   endless=True)
        sampler.set_start(self.iter * per_rank)
        epoch = self.iter * per_rank // sampler.num_samples
        grouped = (GroupedBatchSampler(sampler, aspect_ratio_groups(self.train_set), per_rank, start_batch=self.iter)
                   if self.cfg.data.group_by_aspect_ratio else None)
        loader = make_loader(SampleSeeded(self.train_set, seed=seed), batch_size=per_rank, sampler=sampler,
                             workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                             generator=torch.Generator().manual_seed(seed * 1000 + epoch),
                             collate_fn=collate_detection, batch_sampler=grouped)
        for images, targets in loader:
            yield ([im.to(self.device, non_blocking=True) for im in images],
                   [{k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                     for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets])

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        return self.train_model(*batch)  # torchvision detectors return their losses in training mode

    def losses(self, outputs: Dict[str, torch.Tensor], batch) -> Dict[str, torch.Tensor]:
        return outputs

    def step_position(self, index: int) -> str:
        return f"iteration {index}"  # counted from 0: the checkpoint kept before step N holds N iterations

    def after_fit(self, early: Optional[Dict]) -> Dict[str, Dict[str, float]]:
        """The final evaluation (eval.json), or with a signal only eval.json's record of the stop."""
        if early and early["reason"] != "time_limit":  # a signal: no evaluation, the user wants the process to end
            if self.is_main:
                write_json_atomic(self.output_dir / "eval.json", eval_summary(self, {}, early, final=False))
            return {}
        return self._eval_and_log(final=True, early=early)

    # -- evaluation -------------------------------------------------------------------------------------------
    def _val_batches(self) -> Iterator[List]:
        """This rank's share of the first test.max_images val images through the one detection test loader
        (data/loaders.py: batches of one padded shape, so the AP does not depend on test.batch_size, a total)."""
        count = min(self.cfg.test.max_images or len(self.val_set), len(self.val_set))
        per_rank = -(-self.cfg.test.batch_size // self.dist.world_size)
        return build_det_test_loader(Subset(self.val_set, range(count)), batch_size=per_rank,
                                     num_workers=self.cfg.data.num_workers, rank=self.dist.rank,
                                     world=self.dist.world_size, transform=self.model.transform)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """COCO stats of the current model on the val set through evaluation.inference.inference_on_dataset:
        {"bbox": {"AP": .., ..}, "segm": {..}, "eval_seconds", "amp" (the autocast precision used: test.amp, or
        train.amp when test.amp is null), "max_dets", "ap_unit", "per_category"} on rank 0, {} on the others."""
        started = time.perf_counter()
        test = self.cfg.test
        ids = self.val_set.ids[: test.max_images] if test.max_images else self.val_set.ids
        evaluator = COCOEvaluator(restrict_ground_truth(self.val_set.coco.dataset, ids), self.label_to_category,
                                  iou_types=self.iou_types, mask_threshold=test.mask_threshold,
                                  max_dets=test.max_dets, backend=test.backend, gt_source=str(self.val_set.ann_file))
        out = inference_on_dataset(self.model, self._val_batches(), evaluator, device=self.device, amp=self.eval_amp)
        if self.is_main:
            out["eval_seconds"] = round(time.perf_counter() - started, 2)
            out["amp"] = self.eval_amp  # the precision these numbers were measured at
            self.last_results = evaluator.detections
        return out

    def _eval_and_log(self, final: bool = False, early: Optional[Dict] = None) -> Dict:
        """Evaluate on every rank; log the row, plot, keep best.pt (with periodic evaluations), and with `final`
        write the detections and eval.json."""
        result = self.evaluate()
        tracker = self.best.tracker
        # Rank 0 alone holds the stats; a save of best.pt is collective, so every rank gets the value.
        value = comm.broadcast_object((result.get(self.iou_types[0]) or {}).get("AP") if self.is_main else None)
        if self.is_main:
            row = {"iter": self.iter, "time_s": round(self.train_seconds, 2)}
            for t in self.iou_types:
                row[f"{t}_AP"] = result[t].get("AP")
                if "AP50" in result[t]:
                    row[f"{t}_AP50"] = result[t]["AP50"]
            self.logger.log(row)
            plot_det_curves(self.logger.rows, self.output_dir / "curves.png")
        if self.cfg.train.eval_period or tracker.best is not None:
            if self.best.record(self, {self.best_metric: value}, always_save=False) and self.is_main:
                print(best_line(tracker, self.iou_types[0]), flush=True)  # last.pt too: a resumed run knows it
        if final and self.is_main:
            write_json_atomic(self.output_dir / RESULTS_FILE, self.last_results, indent=None)
            write_json_atomic(self.output_dir / "eval.json", eval_summary(self, result, early, final=True))
        self.model.train()
        return result
