"""Config sections shared by classification (config/cls.py) and detection (config/det.py) training.

One dataclass per shared section; each task gives its own defaults through the schema's default_factory (the loader
fills a section's missing keys from that instance, config/__init__.py), e.g. solver.schedule is cosine for
classification and step for detection. Kept different on purpose, in the task schemas: model.num_classes
(classification: None = from the data), data.train_subset / val_subset (classification: a random subset) vs
data.train.limit / val.limit (detection: the first N), data.mean / std (the classification dataset normalises;
the detector normalises inside the model: model.input.image_mean / image_std), and the task sections loss / ema
(classification) and test (detection).
"""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Literal, Optional, Tuple, Union

OptimizerName = Literal["sgd", "adamw"]
Unit = Literal["epoch", "iter", "fraction"]
# train.amp / test.amp of both schemas; the same choices as utils.amp.AMP_MODES (tests/test_solver_config.py).
AmpMode = Literal["auto", "none", "bf16", "fp16"]


@dataclass
class SolverConfig:
    """Optimizer, learning rate and schedule; the defaults are classification's (detection_solver: detection's).

    batch_size: total images per iteration over all processes (each of N torchrun processes takes 1/N of it).
    base_lr: the lr at reference_batch_size, scaled linearly with batch_size (reference_batch_size 0: used as given).
    epochs / max_iter: training length; max_iter (iterations) wins when set. Detection trains in iterations only.
    steps (in `unit`; fraction: of the whole training): lr *= gamma at each (schedule step); cosine decays to
    min_lr_factor * lr. warmup (in warmup_unit): linear ramps warmup_factor -> 1, constant multiplies by warmup_factor.
    clip_grad_norm: max global gradient norm (0 = no clipping). norm_bias_decay false: no weight decay on norm
    weights and biases.
    """

    RANGES: ClassVar[Dict[str, str]] = {
        "batch_size": "[1, 65536]", "base_lr": "(0, inf)", "reference_batch_size": "[0, inf)", "momentum": "[0, 1)",
        "weight_decay": "[0, inf)", "clip_grad_norm": "[0, inf)", "epochs": "[0, inf)", "max_iter": "[1, inf)",
        "steps": "[0, inf)", "gamma": "(0, 1]", "warmup": "[0, inf)", "warmup_factor": "[0, 1]",
        "min_lr_factor": "[0, 1]"}
    RENAMED: ClassVar[Dict[str, str]] = {
        "lr": "solver.base_lr", "label_smoothing": "loss.label_smoothing", "l1": "loss.l1", "l2": "loss.l2",
        "ims_per_batch": "solver.batch_size", "policy": "solver.schedule", "warmup_iters": "solver.warmup"}
    optimizer: OptimizerName = "sgd"
    batch_size: int = 128
    base_lr: float = 0.1
    reference_batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    norm_bias_decay: bool = True
    clip_grad_norm: float = 0.0
    epochs: Optional[int] = 8
    max_iter: Optional[int] = None
    unit: Unit = "epoch"
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    steps: Tuple[Union[int, float], ...] = ()
    gamma: float = 0.1
    warmup: Union[int, float] = 20
    warmup_unit: Unit = "iter"
    warmup_method: Literal["constant", "linear"] = "linear"
    warmup_factor: float = 0.1
    min_lr_factor: float = 0.0

    def validate(self) -> None:
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"config key 'solver.steps' must be increasing, got {list(self.steps)}")

    def scaled_lr(self) -> float:
        """The lr actually used: base_lr scaled by batch_size / reference_batch_size (as given when that is 0)."""
        return self.base_lr * self.batch_size / self.reference_batch_size if self.reference_batch_size else self.base_lr

    def optimizer_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of engine.optim.build_optimizer, all but lr."""
        return dict(name=self.optimizer, momentum=self.momentum, weight_decay=self.weight_decay,
                    nesterov=self.nesterov, norm_bias_decay=self.norm_bias_decay)


def detection_solver() -> SolverConfig:
    """Detection's defaults (Detectron's R50-FPN 1x): iterations, step decay, 1000 linear warm-up iterations."""
    return SolverConfig(batch_size=16, base_lr=0.02, reference_batch_size=0, epochs=None, max_iter=90000,
                        unit="iter", schedule="step", steps=(60000, 80000), warmup=1000, warmup_unit="iter",
                        warmup_factor=0.001)


def check_iteration_solver(solver: SolverConfig) -> None:
    """Detection trains in iterations: ValueError naming the key otherwise."""
    if solver.epochs is not None:
        raise ValueError(f"config key 'solver.epochs' ({solver.epochs}): detection trains in iterations: set "
                         f"solver.max_iter and solver.epochs=null")
    if solver.max_iter is None:
        raise ValueError("config key 'solver.max_iter' is required: detection trains in iterations")
    for key in ("unit", "warmup_unit"):
        if getattr(solver, key) != "iter":
            raise ValueError(f"config key 'solver.{key}' must be 'iter' for detection, got {getattr(solver, key)!r}")


@dataclass
class TrainConfig:
    """The loop settings (train:) of both tasks; the defaults are classification's (detection_train: detection's).

    Every key means the same in both tasks. period_unit: what eval_period and keep_every count, "epoch" or "iter"
    (the default is the task's: epoch for classification, iter for detection, written into config.yaml;
    classification evaluates at epoch ends, so it takes "epoch" only; detection converts epochs to iterations with
    ceil(train images / solver.batch_size)). eval_period: evaluate every N period_units; 0 = only at the end of
    training (the end always evaluates). keep_every: also keep checkpoints/epoch_N.pt (epochs) or iter_N.pt
    (iterations) at the checkpoints that fall on a multiple of keep_every period_units; 0 = only last.pt / best.pt.
    checkpoint_period: iterations between checkpoints (0 = none in between; classification also saves at every
    epoch end, detection at the end); log_period: iterations between log rows (classification: a console line when progress is off; detection: a
    metrics row of the window's mean losses); 0 = none in between (classification: per epoch; detection: one row
    at the end). time_limit_s: stop training cleanly once this many training seconds have passed (0 = no limit):
    a checkpoint is saved that --resume continues from (detection also evaluates) - a guard for time-boxed runs.
    amp: auto = bf16 on CPUs with native bf16 and CUDA GPUs of compute capability >= 8.0, fp16 on older GPUs, none
    otherwise (utils/amp.resolve_amp); none / bf16 / fp16 force a mode. num_threads: torch CPU threads (0 =
    torch's default, 1 on an oversubscribed CPU: engine/setup.set_threads). deterministic: bit-reproducible kernels
    (CPU only for detection). progress: a tqdm bar. tensorboard: TensorBoard scalars in OUTPUT/tensorboard/ beside
    metrics.csv / metrics.jsonl.
    """

    RANGES: ClassVar[Dict[str, str]] = {
        "seed": "[0, 4294967295]", "eval_period": "[0, inf)", "checkpoint_period": "[0, inf)", "keep_every": "[0, inf)",
        "num_threads": "[0, 1024]", "log_period": "[0, inf)", "time_limit_s": "[0, inf)"}
    RENAMED: ClassVar[Dict[str, str]] = {"print_freq": "train.log_period", "threads": "train.num_threads"}
    output_dir: str = "output/cls_default"
    device: str = "auto"
    amp: AmpMode = "auto"
    seed: int = 0
    deterministic: bool = False
    period_unit: Literal["epoch", "iter"] = "epoch"
    eval_period: int = 1
    checkpoint_period: int = 0
    keep_every: int = 0
    progress: bool = True
    tensorboard: bool = True
    num_threads: int = 0
    log_period: int = 0
    time_limit_s: float = 0.0


def detection_train() -> TrainConfig:
    """Detection's defaults: a log row every 20 iterations, evaluation at the end, a checkpoint every 5000."""
    return TrainConfig(output_dir="output/det", log_period=20, period_unit="iter", eval_period=0,
                       checkpoint_period=5000)
