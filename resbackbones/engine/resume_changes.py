"""What a resumed run does with a config that differs from the one its checkpoint recorded (issue 21, item 3).

    changes = compare_resume_config(state.get("config"), cfg, task="det", checkpoint=path, iteration=state_iter,
                                    total_iters=new_max_iter)      # refused keys: one ConfigError line, exit 2
    apply_solver_changes(optimizer, scheduler, fresh, changes)       # after loading the checkpoint's states
    write_run_config(cfg, OUTPUT / "config.yaml", recorded + changes) # the yaml + one comment line per change

Both trainers call it before anything is written into the run folder, so a refused resume leaves the folder as it
was. Every key of the config (its schema's leaves) falls under one rule of POLICY, longest prefix first; a key the
table does not name is refused, so a new config key is never applied silently:

Applied from the resume iteration on (and recorded):
  solver.base_lr, reference_batch_size, momentum, nesterov, weight_decay, clip_grad_norm; the schedule
  (solver.schedule, steps, unit, gamma, warmup, warmup_unit, warmup_method, warmup_factor, min_lr_factor: a
  function of the iteration, so its value at the resume iteration on); train.eval_period, checkpoint_period,
  keep_every, log_period, time_limit_s, progress, tensorboard, num_threads, device, amp, deterministic;
  data.num_workers, cache_images, on_error; test.* (evaluation); loss.* (classification); ema.decay, warmup_steps;
  model.channels_last, compile, sync_bn (how the model runs, not what it is).
Applied when beyond the checkpoint's position, refused at or below it: solver.max_iter, solver.epochs.
Refused (one line: the key, both values, the fix):
  model.* (backbone, shape, norm, num_classes, weights, input): the checkpoint holds another model;
  data.* (dataset paths, subsets, augmentation, normalisation): the run would go on with other data;
  solver.batch_size: the position and the data order are counted in the checkpoint's batches;
  solver.optimizer, solver.norm_bias_decay: the optimizer state belongs to another optimizer / other groups
  (engine.checkpoint.load_optimizer_state refuses them first, with the settings that differ);
  train.seed (the data order of the rest of the run), ema.enabled (the EMA state).
Not compared: train.output_dir (where the run is, not what it does).

An applied change is recorded: printed ("resume: solver.base_lr 0.02 -> 0.005 from iteration 4"), kept in the
checkpoint ("config_changes", with the earlier resumes' changes) and in config.yaml (which holds the new values) as
comment lines `# - {"key": ..., "old": ..., "new": ..., "iteration": N}` that read_config_changes parses back; a
comment, so the file still loads as a config (train_det --config OUTPUT/config.yaml). train_det's eval.json lists
them too. A refusal is one line naming the key, both values and the fix.
"""
import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import ConfigError, dump_yaml, to_dict
from ..config.legacy import schema_for, upgrade
from ..io.outputs import write_text_atomic

APPLY, REFUSE, LENGTH, IGNORE = "apply", "refuse", "length", "ignore"
_GONE = object()

# prefix (a key, or a section ending in ".") -> (rule, why a refusal refuses). The longest matching prefix wins.
POLICY: Dict[str, Tuple[str, str]] = {
    **{f"solver.{k}": (APPLY, "") for k in (
        "base_lr", "reference_batch_size", "momentum", "nesterov", "weight_decay", "clip_grad_norm", "schedule",
        "steps", "unit", "gamma", "warmup", "warmup_unit", "warmup_method", "warmup_factor", "min_lr_factor")},
    "solver.max_iter": (LENGTH, ""), "solver.epochs": (LENGTH, ""),
    "solver.batch_size": (REFUSE, "the checkpoint's position and data order are counted in its batches"),
    "solver.optimizer": (REFUSE, "the checkpoint's optimizer state belongs to its optimizer"),
    "solver.norm_bias_decay": (REFUSE, "it changes the optimizer's parameter groups the checkpoint holds"),
    **{f"train.{k}": (APPLY, "") for k in (
        "period_unit", "eval_period", "checkpoint_period", "keep_every", "log_period", "time_limit_s", "progress", "tensorboard",
        "num_threads", "device", "amp", "deterministic")},
    "train.output_dir": (IGNORE, ""),
    "train.seed": (REFUSE, "the data order and augmentation of the rest of the run depend on it"),
    "data.": (REFUSE, "the run would go on with other data than it trained on"),
    "data.group_by_aspect_ratio": (REFUSE, "the rest of the run's batches are cut from the data order by it"),
    "data.num_workers": (APPLY, ""), "data.cache_images": (APPLY, ""), "data.on_error": (APPLY, ""),
    "test.": (APPLY, ""), "loss.": (APPLY, ""), "ema.decay": (APPLY, ""), "ema.warmup_steps": (APPLY, ""),
    "ema.enabled": (REFUSE, "the checkpoint's EMA state would be missing or left behind"),
    "model.": (REFUSE, "the checkpoint holds another model"),
    "model.channels_last": (APPLY, ""), "model.compile": (APPLY, ""), "model.sync_bn": (APPLY, ""),
}
# The optimizer's hyperparameters a config key sets (fresh groups' values replace the checkpoint's when applied).
GROUP_KEYS = {"solver.momentum": "momentum", "solver.nesterov": "nesterov", "solver.weight_decay": "weight_decay"}
CHANGE_PREFIX = "# - "


@dataclass(frozen=True)
class ConfigChange:
    """One key a resumed run changed, applied from `iteration` (the first iteration trained with it) on."""

    key: str
    old: Any
    new: Any
    iteration: int

    def line(self) -> str:
        return f"resume: {self.key} {_shown(self.old)} -> {_shown(self.new)} from iteration {self.iteration}"

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new, "iteration": self.iteration}


def rule_for(key: str) -> Tuple[str, str]:
    """POLICY's (rule, reason) for a dotted key; keys it does not name are refused."""
    matches = [p for p in POLICY if key == p or (p.endswith(".") and key.startswith(p))]
    if not matches:
        return REFUSE, "the resume table (engine/resume_changes.py) does not say it can change mid-run"
    return POLICY[max(matches, key=len)]


def leaf_keys(schema: type, prefix: str = "") -> List[str]:
    """Every dotted leaf key of a config schema (sections recurse; a dict-valued field such as
    model.backbone.options is one leaf)."""
    keys: List[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _GONE
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def compare_resume_config(recorded: Optional[Mapping[str, Any]], cfg: Any, *, task: str, checkpoint: os.PathLike,
                          iteration: int, total_iters: int, position: str = "",
                          min_length: Optional[Dict[str, int]] = None) -> List[ConfigChange]:
    """The changes of `cfg` (this run's resolved config) against `recorded` (the checkpoint's config, any older
    vocabulary) that POLICY applies, each from `iteration` on; raises ConfigError (one line naming every refused key
    with both values and the fix) when a change is refused. total_iters: this run's length in iterations (a length
    key at or below `iteration` is refused); position describes the checkpoint's place ("iteration 17", "epoch 2 +
    3 iterations"); min_length: the smallest value each length key may take to train on. recorded None (a
    checkpoint older than recorded configs): nothing to compare, []. Keys the recorded config lacks (added later)
    are not compared."""
    if not recorded:
        return []
    old, _ = upgrade(recorded, task)
    new = to_dict(cfg)
    changes, refused = [], []
    for key in leaf_keys(schema_for(task)):
        before, after = _get(old, key), _get(new, key)
        if before is _GONE or after is _GONE or _plain(before) == _plain(after):
            continue
        rule, why = rule_for(key)
        if rule == IGNORE:
            continue
        if rule == LENGTH and total_iters <= iteration:
            least = (min_length or {}).get(key)
            refused.append(f"{key}={_shown(after)} is at or below the checkpoint's position "
                           f"({position or f'iteration {iteration}'}): nothing would be trained; give "
                           f"{key} >= {least if least is not None else iteration + 1}, or drop it to keep "
                           f"{_shown(before)}")
        elif rule == REFUSE:
            refused.append(f"{key} is {_shown(after)} here but {_shown(before)} in the checkpoint ({why}): resume "
                           f"with {key}={_shown(before)}, or start a new run (--overwrite or another --output)")
        else:
            changes.append(ConfigChange(key, _plain(before), _plain(after), iteration))
    if refused:
        more = f" (and {len(refused) - 2} more)" if len(refused) > 2 else ""
        raise ConfigError(f"--resume from {checkpoint}: " + "; ".join(refused[:2]) + more)
    return changes


def fresh_solver_state(optimizer, scheduler) -> Dict[str, Any]:
    """What this run's config built, taken before the checkpoint's states are loaded over it: the scheduler's base
    lrs and each group's hyperparameters."""
    return {"base_lrs": list(scheduler.base_lrs),
            "groups": [{k: v for k, v in g.items() if k in GROUP_KEYS.values()} for g in optimizer.param_groups]}


def apply_solver_changes(optimizer, scheduler, fresh: Mapping[str, Any], changes: Sequence[ConfigChange]) -> None:
    """Make the applied solver changes true after optimizer.load_state_dict / scheduler.load_state_dict put the
    checkpoint's values back: the new base lrs (solver.base_lr, reference_batch_size), the groups' momentum /
    nesterov / weight_decay, and the lr of the next step from the schedule as this run builds it (a LambdaLR keeps
    this run's lambda across load_state_dict; its base_lrs and the groups' lr are the checkpoint's until set here).
    Nothing is touched when no solver key changed, so an unchanged resume stays bit-identical."""
    keys = {c.key for c in changes if c.key.startswith("solver.")}
    if not keys:
        return
    scheduler.base_lrs = list(fresh["base_lrs"])
    for group, base, hyper in zip(optimizer.param_groups, scheduler.base_lrs, fresh["groups"]):
        group["initial_lr"] = base
        for key in keys & set(GROUP_KEYS):
            if GROUP_KEYS[key] in hyper:
                group[GROUP_KEYS[key]] = hyper[GROUP_KEYS[key]]
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:  # not a LambdaLR: no function of the iteration to re-evaluate
        return
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def write_run_config(cfg: Any, path: os.PathLike, changes: Sequence[ConfigChange]) -> Path:
    """config.yaml of a run: `cfg` as YAML (dump_yaml's text) and, when resumes changed keys, one comment line per
    change (read_config_changes reads them back)."""
    if not changes:
        return dump_yaml(cfg, path)
    import yaml

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)  # dump_yaml's text
    text += ("# config_changes: keys a --resume changed, applied from the iteration named "
             "(engine/resume_changes.py)\n")
    text += "".join(f"{CHANGE_PREFIX}{json.dumps(c.to_dict())}\n" for c in changes)
    return write_text_atomic(Path(path), text)


def read_config_changes(path: os.PathLike) -> List[ConfigChange]:
    """The changes recorded in a run's config.yaml (write_run_config), oldest first; [] when there are none."""
    found = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(CHANGE_PREFIX + "{"):
            found.append(ConfigChange(**json.loads(line[len(CHANGE_PREFIX):])))
    return found


def recorded_changes(state: Mapping[str, Any]) -> List[ConfigChange]:
    """The changes earlier resumes recorded in a checkpoint ("config_changes")."""
    return [ConfigChange(**c) for c in state.get("config_changes") or []]
