"""Typed config schema of classification training (tools/train_cls.py, configs/cls/*.yaml).

Each section's RANGES gives the valid range of its numeric fields, checked when a config is loaded
(resbackbones/config/ranges.py): a value outside is one line naming the key and the range, exit 2 in the tools.
Keys shared with detection training (config/det.py) have one name in both: model.backbone.name/weights/options,
data.num_workers, data.flip_prob, solver.base_lr, and the sections solver and train (config/common.py). RENAMED lists the keys they
replaced (refused with one line naming the new key; config/legacy.py upgrades configs stored before the rename).
Kept different on purpose: model.num_classes (None = from the data), data.train_subset / val_subset (a random
subset), data.mean / std (the dataset normalises; detection's model does), and the sections loss and ema."""
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Literal, Optional, Tuple

from . import ConfigError
from .common import SolverConfig, TrainConfig


# RGB mean / std in [0, 1] units of the recipes (data/cls_transforms.py normalises with them): torchvision's ImageNet
# values and the CIFAR-10 train set's.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class BackboneConfig:
    """The classifier's network: the part of detection's model.backbone (config/detector.py) a classifier uses."""

    name: str = "cifar_resnet20"               # rb.list_backbones()
    weights: str = ""                          # initial weights: a file or torchvision:<ENUM>; "": random init
    options: Dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {norm: GN, zero_init_residual: true}


@dataclass
class ModelConfig:
    """The classifier (model:): a backbone under a global-pool + linear head (backbones/classifier.py)."""

    RANGES: ClassVar[Dict[str, str]] = {"num_classes": "[1, 1000000]"}
    RENAMED: ClassVar[Dict[str, str]] = {
        "arch": "model.backbone.name", "weights": "model.backbone.weights", "options": "model.backbone.options"}
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_classes: Optional[int] = None          # None: the number of class folders in the train split
    sync_bn: bool = True                       # BN -> SyncBN under DDP on CUDA
    channels_last: bool = False
    compile: bool = False                      # torch.compile the model


@dataclass
class SyntheticConfig:
    """The embedded synthetic set used when data.root is None: class-coloured shapes, generated from `seed`."""

    RANGES: ClassVar[Dict[str, str]] = {
        "train_per_class": "[1, inf)", "val_per_class": "[1, inf)", "image_size": "[8, 16384]", "seed": "[0, 4294967295]"}
    train_per_class: int = 300
    val_per_class: int = 100
    image_size: int = 32
    seed: int = 0


@dataclass
class DataConfig:
    """Images and their transforms (data:). root: a folder with train/ and val/ (or test/) class folders or .tar
    archives (data/folders.py), None for the synthetic set. recipe: "cifar" (pad + random crop + flip at
    crop_size), "imagenet" (RandomResizedCrop at crop_size over `scale`, flip; eval: resize to resize_size, centre
    crop) or "none" (no augmentation). mean / std normalise RGB in [0, 1] units. ten_crop: evaluate on the ten
    crops (4 corners + centre, and their flips) averaged. on_error "skip": an undecodable image is warned about
    once and replaced by the next sample (data/folders.py); the default names the file and stops (exit 2).
    """

    RANGES: ClassVar[Dict[str, str]] = {
        "train_subset": "[1, inf)", "val_subset": "[1, inf)", "crop_size": "[1, 16384]", "resize_size": "[1, 16384]",
        "scale": "(0, 1]", "pad": "[0, inf)", "flip_prob": "[0, 1]", "mean": "[0, 255]", "std": "(0, 255]",
        "num_workers": "[0, 256]"}
    RENAMED: ClassVar[Dict[str, str]] = {
        "workers": "data.num_workers", "hflip": "data.flip_prob (true = 0.5, false = 0.0)"}
    root: Optional[str] = None                 # DIR with train/ and val/ or test/ (folders or .tar); None: synthetic
    train_split: Tuple[str, ...] = ("train",)
    val_split: Tuple[str, ...] = ("val", "test")
    train_subset: Optional[int] = None         # use a fixed random subset of this many train images
    val_subset: Optional[int] = None
    recipe: Literal["imagenet", "cifar", "none"] = "cifar"
    crop_size: int = 32
    resize_size: Optional[int] = None          # eval resize of the imagenet recipe (256 for a 224 crop)
    scale: Tuple[float, float] = (0.08, 1.0)   # RandomResizedCrop area range
    pad: int = 4
    flip_prob: float = 0.5                     # horizontal-flip probability of a training image
    ten_crop: bool = False
    mean: Tuple[float, float, float] = CIFAR_MEAN
    std: Tuple[float, float, float] = CIFAR_STD
    num_workers: int = 2                       # DataLoader workers per process
    on_error: Literal["raise", "skip"] = "raise"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class LossConfig:
    """Cross-entropy (label_smoothing) plus explicit L1 / L2 penalties on the conv and linear kernels."""

    RANGES: ClassVar[Dict[str, str]] = {"label_smoothing": "[0, 1)", "l1": "[0, inf)", "l2": "[0, inf)"}
    label_smoothing: float = 0.0
    l1: float = 0.0
    l2: float = 0.0


@dataclass
class EMAConfig:
    """An exponential moving average of the weights (engine/ema.py), evaluated and exported when enabled; its decay
    ramps as decay * (1 - exp(-step / warmup_steps))."""

    RANGES: ClassVar[Dict[str, str]] = {"decay": "[0, 1)", "warmup_steps": "[0, inf)"}
    enabled: bool = False
    decay: float = 0.9999
    warmup_steps: int = 2000


@dataclass
class ClsConfig:
    """A classification training config (tools/train_cls.py): model, data, solver, loss, ema, train.

        cfg = load_config(ClsConfig, "configs/cls/cifar_resnet20.yaml", overrides=["solver.base_lr=0.05"])

    Training length: solver.epochs, or solver.max_iter (iterations) when set; the train section's periods count
    epochs (train.period_unit).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        s = self.solver
        if not s.max_iter and (s.epochs or 0) < 1:
            raise ValueError(f"config key 'solver.epochs' must be >= 1, got {s.epochs}")
        if self.train.period_unit != "epoch":
            raise ValueError(f"config key 'train.period_unit' is {self.train.period_unit!r}: classification evaluates "
                             f"and keeps checkpoints at epoch ends, so train.eval_period and train.keep_every count "
                             f"epochs: use 'epoch' (train.checkpoint_period counts iterations)")


def with_epochs(cfg: ClsConfig, epochs: int) -> ClsConfig:
    """`cfg` trained for `epochs` epochs instead of its own length (tools/train_cls.py --epochs); changes cfg in place
    and returns it. solver.max_iter is dropped. An iteration recipe (solver.max_iter with steps in iterations, e.g.
    CIFAR's 64k iterations with /10 at 32k and 48k) keeps its shape at the new length: its steps become fractions
    of the training. Raises ConfigError for epochs < 1."""
    if epochs < 1:
        raise ConfigError(f"solver.epochs must be >= 1, got {epochs}")
    solver = cfg.solver
    if solver.max_iter and solver.unit == "iter":
        solver.steps = tuple(s / solver.max_iter for s in solver.steps)
        solver.unit = "fraction"
    solver.max_iter = None
    solver.epochs = epochs
    return cfg
