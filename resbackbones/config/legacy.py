"""Read-only upgrade of configs stored before the shared vocabulary (issue 15): the config.yaml of a run folder and
checkpoint["config"] written by tools/train_cls.py / train_det.py of an earlier version.

    data, notes = upgrade(checkpoint["config"], "cls")     # {"solver": {"lr": 0.1}} -> {"solver": {"base_lr": 0.1}}
    cfg = load_config(ClsConfig, base=data)

Only where stored output is read (resume, export from a checkpoint, weights metadata, project summaries); a user's
YAML or key=value override with an old key is refused instead (the sections' RENAMED, config/__init__.py), so an old
name never means anything silently. The renames come from the same RENAMED tables; VALUE_RULES convert the values
whose type changed. A config already in the new vocabulary comes back unchanged.
"""
import copy
import dataclasses
import typing
from typing import Any, Callable, Dict, List, Mapping, Tuple

__all__ = ["upgrade", "renamed_keys", "schema_for"]

# New dotted key -> conversion of a stored value of the old type (values of the new type pass unchanged).
VALUE_RULES: Dict[str, Callable[[Any], Any]] = {
    "data.flip_prob": lambda v: (0.5 if v else 0.0) if isinstance(v, bool) else v,   # was data.hflip: bool (cls)
    "model.backbone.weights": lambda v: "" if v is None else v,                      # was model.weights: null (cls)
    "solver.clip_grad_norm": lambda v: 0.0 if v is None else v,                      # null = off (cls)
    "test.amp": lambda v: None if v == "" else v,                                    # "" = train.amp (det)
}


def schema_for(task: str) -> type:
    """The config schema of a task: "cls" (ClsConfig) or "det" (DetTrainConfig)."""
    if task == "cls":
        from .cls import ClsConfig

        return ClsConfig
    if task == "det":
        from .det import DetTrainConfig

        return DetTrainConfig
    raise ValueError(f"unknown task {task!r}; choose cls, det")


def renamed_keys(schema: type, prefix: str = "") -> List[Tuple[str, str]]:
    """(old dotted key, new dotted key) for every RENAMED entry of `schema` and its sections."""
    moves = [(prefix + old, new.split(" ", 1)[0]) for old, new in getattr(schema, "RENAMED", {}).items()]
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            moves += renamed_keys(hints[f.name], f"{prefix}{f.name}.")
    return moves


def _pop(data: Dict[str, Any], dotted: str) -> Tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _set(data: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _get(data: Mapping[str, Any], dotted: str) -> Tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def upgrade(data: Mapping[str, Any], task: str) -> Tuple[Dict[str, Any], List[str]]:
    """`data` (a stored config as a dict, task "cls" or "det") in today's vocabulary, and one note per key that
    changed ("solver.lr -> solver.base_lr"). The input is not modified."""
    out = copy.deepcopy(dict(data))
    notes = []
    for old, new in renamed_keys(schema_for(task)):
        found, value = _pop(out, old)
        if not found:
            continue
        if not _get(out, new)[0]:  # both present (a hand-edited file): the new key is what a load would read
            _set(out, new, value)
        notes.append(f"{old} -> {new}")
    for key, rule in VALUE_RULES.items():
        found, value = _get(out, key)
        converted = rule(value) if found else value
        if converted is not value:  # identity, not ==: False == 0.0, yet a bool is refused where a float is expected
            _set(out, key, converted)
            if not any(note.endswith(f"-> {key}") for note in notes):
                notes.append(f"{key}: {value!r} -> {converted!r}")
    return out, notes
