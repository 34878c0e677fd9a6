"""Typed schema of a detection TRAINING config (tools/train_det.py): model + data + solver + train + test.

    cfg = load_config(DetTrainConfig, "configs/mrcnn_r50.yaml", overrides=["solver.max_iter=200"])

Schedules are in iterations (detectron2's convention): solver.max_iter, solver.steps, solver.warmup.
solver.batch_size is the TOTAL batch over all processes (each of N torchrun processes takes 1/N of it), and
solver.base_lr belongs to that total batch, so a config trains the same whatever the number of GPUs.
Keys shared with classification training (config/cls.py) have one name in both, and the solver section is one
and train sections are the classes of config/common.py with detection's defaults; RENAMED lists the keys it replaced (solver.ims_per_batch,
test.ims_per_batch, solver.policy, solver.warmup_iters; refused with one line naming the new key), config/legacy.py upgrades configs
stored before the rename. test.amp null (was "") follows train.amp.
"""
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Literal, Optional, Tuple

from ..utils.errors import CocoEvalError
from .common import AmpMode, SolverConfig, TrainConfig, check_iteration_solver, detection_solver, detection_train
from .detector import DetectorConfig
from .ranges import check_max_dets


@dataclass
class DatasetConfig:
    """One split. kind "coco": ann_file + image_root; kind "shapes": the embedded synthetic set, generated
    deterministically from (seed, num_images, image_size) into `root` (reused when already there).

    with_masks: decode instance masks (needed for Mask R-CNN; box-only sets such as BCCD set it false).
    filter_empty: drop images without annotations (training); otherwise kept as background-only images.
    limit: use only the first `limit` images (0 = all) - quick runs and tests.
    """

    RANGES: ClassVar[Dict[str, str]] = {  # numeric ranges (config/ranges.py)
        "num_images": "[0, inf)", "seed": "[0, 4294967295]", "image_size": "[192, 16384]", "limit": "[0, inf)"}
    kind: Literal["coco", "shapes"] = "coco"
    ann_file: str = ""
    image_root: str = ""
    root: str = ""  # shapes: output folder; "" -> $RESBACKBONES_DATA (or ~/.cache/resbackbones)/shapes/<name>
    num_images: int = 0
    seed: int = 0
    image_size: int = 192
    with_masks: bool = True
    filter_empty: bool = False
    limit: int = 0


@dataclass
class DataConfig:
    """Training / validation sets and the loader. flip_prob: horizontal-flip probability during training.

    The model resizes (model.input.min_size / max_size); see data/det_transforms.py for why the dataset does not.
    cache_images: keep decoded images and masks in memory after first use (small sets: no per-step decoding).
    group_by_aspect_ratio: training batches of landscape-or-square or of portrait images only (detectron2's
    ASPECT_RATIO_GROUPING), so a batch pads less; grouped within windows of 16 batches so that a resumed run sees
    the same batches (data/loaders.GroupedBatchSampler). Off by default: a set of one orientation gains nothing.
    """

    RANGES: ClassVar[Dict[str, str]] = {"flip_prob": "[0, 1]", "num_workers": "[0, 256]"}
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=DatasetConfig)
    flip_prob: float = 0.5
    num_workers: int = 2
    cache_images: bool = False
    group_by_aspect_ratio: bool = False


@dataclass
class TestConfig:
    """Evaluation: iou_types default to bbox (+ segm when the model has a mask head); max_images 0 = all.

    amp: autocast precision of evaluation; null = train.amp's choice (bf16 where native under "auto"), "none" forces
    fp32. Boxes, scores and masks come out float32 either way (detection/fp32_outputs.py).
    max_dets: COCOeval's maxDets, three increasing per-image caps: AR1 / AR10 at the first two, AP and the other
    stats at the third. Crowded sets raise the third above their most instances per image (and
    model.roi_heads.detections_per_img with it), e.g. [1, 10, 400] for DSB2018 nuclei.
    batch_size: images per evaluation batch over all processes, as solver.batch_size is for training (each of N
    processes takes ceil(1/N) of it). Batches hold images of one padded shape (data/loaders.py), so the stats do not
    depend on it.
    """

    RANGES: ClassVar[Dict[str, str]] = {
        "max_dets": "[1, 1000000]", "mask_threshold": "[0, 1]", "batch_size": "[1, 65536]", "max_images": "[0, inf)"}
    RENAMED: ClassVar[Dict[str, str]] = {"ims_per_batch": "test.batch_size"}
    iou_types: Tuple[str, ...] = ()
    max_dets: Tuple[int, ...] = (1, 10, 100)
    amp: Optional[AmpMode] = None
    mask_threshold: float = 0.5
    batch_size: int = 8
    max_images: int = 0
    backend: str = "auto"


@dataclass
class DetTrainConfig:
    """A detection training config (tools/train_det.py): model (config/detector.py), data, solver, train, test.

        cfg = load_config(DetTrainConfig, "configs/quickstart.yaml", overrides=["solver.max_iter=200"])

    Training length in iterations (solver.max_iter); validate() checks the cross-field rules (COCO paths, iou
    types against the mask head, max_dets) and raises ValueError naming the key.
    """

    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=detection_solver)
    train: TrainConfig = field(default_factory=detection_train)
    test: TestConfig = field(default_factory=TestConfig)

    def validate(self) -> None:
        """Cross-field checks; ValueError naming the key (load_config reports it as a ConfigError)."""
        self.model.validate()
        check_iteration_solver(self.solver)
        for split in ("train", "val"):
            d = getattr(self.data, split)
            if d.kind == "coco" and d.ann_file and not d.image_root:
                raise ValueError(f"data.{split}.image_root is required with data.{split}.ann_file")
            if d.kind == "shapes" and (d.ann_file or d.image_root):  # was ignored: trained on the synthetic set
                given = "ann_file" if d.ann_file else "image_root"
                raise ValueError(f"data.{split}.{given} is set but data.{split}.kind is 'shapes' (the embedded "
                                 f"synthetic set), which would ignore it: add data.{split}.kind=coco")
            if d.kind == "shapes" and d.num_images < 1:
                raise ValueError(f"data.{split}.num_images must be >= 1 for kind 'shapes', got {d.num_images}")
        for t in self.test.iou_types:
            if t not in ("bbox", "segm"):
                raise ValueError(f"test.iou_types: unknown {t!r}; choose bbox, segm")
        if "segm" in self.test.iou_types and not self.model.mask_head.enabled:
            raise ValueError("test.iou_types has 'segm' but model.mask_head.enabled is false")
        try:
            check_max_dets(self.test.max_dets)
        except CocoEvalError as error:
            raise ValueError(f"test.{error}") from None


def default_iou_types(cfg: DetTrainConfig) -> Tuple[str, ...]:
    if cfg.test.iou_types:
        return tuple(cfg.test.iou_types)
    return ("bbox", "segm") if cfg.model.mask_head.enabled else ("bbox",)
