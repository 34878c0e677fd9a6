"""What every tool in tools/ shares (detectron2's default_argument_parser / default_setup, for our configs).

    parser = default_argument_parser(__doc__, task="det")
    args = parser.parse_intermixed_args(argv)          # key=value overrides before, between or after the flags
    cfg = default_setup(DetTrainConfig, args, {"output": "train.output_dir", "device": "train.device"})
    sys.exit(run(lambda: body(cfg), interrupt_hint="interrupted; continue with --resume"))

Imported as `from _cli import ...` (a script's own folder is first on the import path; the package comes from the
editable install, tools/dev.py). The underscore: not a tool itself.
"""
import argparse
import re
from typing import Callable, Mapping, Optional, Type, TypeVar

from resbackbones.config import load_config
from resbackbones.utils.amp import AMP_MODES
from resbackbones.engine.tool_errors import run_tool
from resbackbones.io.outputs import check_output_name, clear_registries

T = TypeVar("T")
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a config override "key.path=value" (never a checkpoint path)
AMP_HELP = ("autocast precision: auto = bf16 where native (CPU amx_bf16 / avx512_bf16, CUDA compute capability >= "
            "8.0), fp16 on older GPUs, else fp32; none = fp32")
# The trainers' shared flags, in each trainer's words (what --weights may be, what --overwrite deletes).
TRAINER_HELP = {
    "cls": {"config": "YAML config (configs/cls/*.yaml); default: the built-in synthetic run",
            "overwrite": "replace the run in a non-empty output folder (deletes its checkpoints, metrics, config)",
            "eval_only": "only evaluate --weights on the val split",
            "weights": "initial weights: a file (ours, a checkpoint, torchvision .pth, detectron2 .pkl) or "
                       "torchvision:<ENUM>; the head loads where its shape fits",
            "resume": "resume from CKPT, or from OUTPUT/checkpoints/last.pt when no path is given"},
    "det": {"config": "YAML config (configs/*.yaml); default: configs/quickstart.yaml",
            "overwrite": "replace the run in a non-empty output folder (deletes its checkpoints, metrics, "
                         "eval.json, inference/)",
            "eval_only": "evaluate --weights (or OUTPUT/checkpoints/last.pt) and exit",
            "weights": "backbone weights to start from; with --eval-only: a checkpoint",
            "resume": "resume from CKPT, or from OUTPUT/checkpoints/last.pt when no path is given"},
}


def default_argument_parser(description: str, *, task: Optional[str] = None, overrides: bool = True,
                            config_default: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser showing `description` as written (the tool's docstring, examples included).

    task "cls" / "det" adds the trainers' flags: --config (default config_default), --output, --device, --resume,
    --overwrite, --eval-only, --weights, --resume [CKPT] (engine.checkpoint.find_resume_checkpoint). overrides adds
    the positional `key=value` config overrides; parse with parse_intermixed_args so they may stand anywhere.
    """
    if task is not None and task not in TRAINER_HELP:
        raise ValueError(f"task must be one of {sorted(TRAINER_HELP)}, got {task!r}")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if task is not None:
        text = TRAINER_HELP[task]
        parser.add_argument("--config", default=config_default, help=text["config"])
        parser.add_argument("--output", help="output DIR (train.output_dir)")
        parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
        parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT", help=text["resume"])
        parser.add_argument("--overwrite", action="store_true", help=text["overwrite"])
        parser.add_argument("--eval-only", action="store_true", help=text["eval_only"])
        parser.add_argument("--weights", help=text["weights"])
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="config overrides, e.g. solver.base_lr=0.01 (any key of the config)")
    return parser


def add_amp_argument(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """--amp with the choices every tool accepts (utils.amp.AMP_MODES; default auto)."""
    parser.add_argument("--amp", default="auto", choices=AMP_MODES, help=prefix + AMP_HELP)


def quote(value: object) -> str:
    """A flag value as override text: strings single-quoted, so paths and names stay strings even where YAML would
    read a number or a boolean ("1e3", "yes"); numbers as written."""
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


def flag_overrides(args: argparse.Namespace, flags: Mapping[str, str]) -> list:
    """["key='value'", ...] for each flag of `flags` (args attribute -> config key) given on the command line."""
    return [f"{key}={quote(getattr(args, name))}" for name, key in flags.items() if getattr(args, name) is not None]


def default_setup(schema: Type[T], args: argparse.Namespace, flags: Mapping[str, str]) -> T:
    """The config of a command line: schema defaults <- args.config <- flags (args attribute -> config key, in
    `flags` order) <- positional key=value overrides, which win. Flag values go through the same override parser
    as text, so their types are checked exactly like an override's. `--resume key=value` (scripts write that) is
    --resume and an override, not a checkpoint path: args.resume becomes True. Raises ConfigError (one line)."""
    overrides = list(args.overrides)
    check_output_name(getattr(args, "output", None) or "", "--output")  # not UTF-8: one line, not a "bad override"
    if isinstance(getattr(args, "resume", None), str) and OVERRIDE.match(args.resume):
        overrides, args.resume = [args.resume, *overrides], True
    return load_config(schema, args.config, flag_overrides(args, flags) + overrides)


def run(body: Callable[[], int], *, interrupt_hint: str) -> int:
    """body()'s exit code, or the failure's (engine.tool_errors.run_tool): 0 ok (or body's own code), 2 a user error
    (any ValueError: config, data, weights, checkpoint, output; or a missing file) as one line "error: ...",
    3 training diverged, 130 interrupted (interrupt_hint on stderr). Output-rule inputs of an earlier run: forgotten."""
    clear_registries()
    return run_tool(body, interrupt_hint=interrupt_hint, user_errors=(FileNotFoundError,))
