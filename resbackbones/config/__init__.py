"""The one config system: typed dataclass schemas, YAML with `_base_` inheritance, `a.b.c=value` overrides.

The training schemas live side by side in this package: config/cls.py (ClsConfig, tools/train_cls.py) and
config/det.py (DetTrainConfig, tools/train_det.py); config/ranges.py checks the numeric ranges they declare.

    @dataclass
    class Solver:
        base_lr: float = 0.1
        steps: Tuple[int, ...] = (30, 60)

    @dataclass
    class Config:
        solver: Solver = field(default_factory=Solver)

    cfg = load_config(Config, "configs/x.yaml", overrides=["solver.base_lr=0.02", "solver.steps=[60000,80000]"])

Supported field types: bool, int, float (an int is accepted), str, Any, Optional[X], Union[...], Literal[...],
List[X], Tuple[X, ...], Tuple[X, Y], Dict[str, X] and nested dataclasses. A schema declares the numeric ranges of
its fields in a class attribute RANGES (config/ranges.py), checked before its validate(). Every mistake raises
ConfigError (a ValueError) with one line naming the dotted key (and the file or override it came from), the
expected type (or range) and the value, and for unknown keys the closest valid key. A section may declare
RENAMED = {old leaf: "new.dotted.key [note]"}: the old key is refused with one line naming the new one
(`config key 'solver.lr' was renamed: use 'solver.base_lr'`); config/legacy.py upgrades stored configs instead.
"""
import copy
import dataclasses
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from ..io.outputs import write_text_atomic
from ..utils.errors import ConfigError
from .ranges import check_ranges

__all__ = ["ConfigError", "load_config", "from_dict", "to_dict", "dump_yaml", "parse_overrides", "merge_dicts",
           "load_yaml_with_bases"]

BASE_KEY = "_base_"
T = TypeVar("T")




# -- YAML files with _base_ ---------------------------------------------------------------------------------------
def merge_dicts(base: Mapping[str, Any], child: Mapping[str, Any]) -> Dict[str, Any]:
    """Deep merge: nested mappings merge key by key, anything else in `child` replaces `base`'s value."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml_with_bases(path: Union[str, os.PathLike], _chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a YAML mapping, resolving `_base_: path | [paths]` (relative to the file; later bases and the file win)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in _chain + (resolved,))
        raise ConfigError(f"config _base_ cycle: {cycle}")
    try:
        data = yaml.safe_load((raw := path.read_bytes()).decode("utf-8-sig"))
    except UnicodeDecodeError as error:  # decoded here, not by open(): the codec's message names no file (issue 21)
        raise ConfigError(f"config file {path} is not UTF-8: byte 0x{raw[error.start]:02x} at {error.start}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, found {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"config file {path}: {BASE_KEY} file not found: {base_path}")
        merged = merge_dicts(merged, load_yaml_with_bases(base_path, _chain + (resolved,)))
    return merge_dicts(merged, data)


# -- CLI overrides ------------------------------------------------------------------------------------------------
def parse_overrides(overrides: Iterable[str]) -> List[Tuple[str, Any]]:
    """["a.b=1", "c=[1,2]"] -> [("a.b", 1), ("c", [1, 2])]; values parsed with yaml.safe_load."""
    parsed = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value, e.g. solver.base_lr=0.01")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: empty key; expected key=value, e.g. solver.base_lr=0.01")
        try:
            value = _override_value(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"bad override {item!r}: value {text!r} is not valid YAML") from None
        parsed.append((key, value))
    return parsed


def _override_value(text: str) -> Any:
    """yaml.safe_load(text), except that text with bytes that are not UTF-8 (a Latin-1 path from the command line,
    as lone surrogates) is no YAML, and was a "bad override" of the tool's own --data: the path it spells (issue 21)"""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return yaml.safe_load(text)
    value = text.strip()  # as _cli.quote wrote it: '...' with '' for '
    return value[1:-1].replace("''", "'") if len(value) >= 2 and value[0] == value[-1] == "'" else value


def _apply_override(data: Dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"bad override {key}=...: {prefix!r} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


# -- typed validation ---------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Union:
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (tuple, Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "list [" + ", ".join(_type_name(a) for a in args) + "]" if args else "list"
    if origin in (dict, Dict):
        return f"mapping of {_type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _Mismatch(Exception):
    pass


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    """Check `value` against type `tp` and return the typed value (lists -> tuples, dicts -> dataclasses)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _build(tp, value, key, where)
    if origin is Union:
        # Try exact-kind members first so that e.g. Optional[float] keeps None as None.
        for member in args:
            try:
                return _convert(member, value, key, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string; users mean the number.
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin in (tuple, Tuple) and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_convert_item(a, v, f"{key}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [_convert_item(item_type, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin in (tuple, Tuple) else items
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_type, value_type = args if args else (Any, Any)
        return {_convert_item(key_type, k, f"{key}.{k}", where): _convert_item(value_type, v, f"{key}.{k}", where)
                for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _convert_item(tp: Any, value: Any, key: str, where: str) -> Any:
    try:
        return _convert(tp, value, key, where)
    except _Mismatch:
        raise ConfigError(f"{where}config key {key!r}: expected {_type_name(tp)}, got {value!r}") from None


def _section_default(f: dataclasses.Field, parent: Any) -> Any:
    """The default instance of section field `f`: the parent default's value, else the field's default_factory()
    (a task schema gives a shared section its own defaults this way, config/common.py); None for a plain field."""
    if parent is not None:
        value = getattr(parent, f.name)
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


def _build(schema_cls: Type[T], data: Mapping[str, Any], prefix: str, where: str, defaults: Any = None) -> T:
    hints = typing.get_type_hints(schema_cls)
    fields = {f.name: f for f in dataclasses.fields(schema_cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            renamed = getattr(schema_cls, "RENAMED", {}).get(name)
            if renamed:  # no aliases: an old key would silently mean two things across run folders
                new_key, _, note = renamed.partition(" ")
                note = f" {note}" if note else ""
                raise ConfigError(f"{where}config key {dotted!r} was renamed: use {new_key!r}{note}")
            valid = [f"{prefix}.{n}" if prefix else n for n in fields]
            if isinstance(value, Mapping) and value:
                # A mistyped section: name the full dotted leaf key and suggest among the full leaf keys.
                dotted = _first_leaf(value, dotted)
                candidates = _leaf_keys(schema_cls, prefix) + valid
            else:
                candidates = valid
            close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            raise ConfigError(f"{where}unknown config key {dotted!r}{hint}; valid keys here: {shown}")
        section_default = _section_default(fields[name], defaults)
        if section_default is not None and isinstance(value, Mapping):
            kwargs[name] = _build(hints[name], value, dotted, where, section_default)
        else:
            kwargs[name] = _convert_item(hints[name], value, dotted, where)
    if defaults is not None:  # the keys this mapping leaves out keep the section's own defaults
        kwargs = {**{n: copy.deepcopy(getattr(defaults, n)) for n in fields}, **kwargs}
    try:
        instance = schema_cls(**kwargs)
    except TypeError as error:  # a required field without default that the config does not give
        raise ConfigError(f"{where}config section {prefix or '<top>'!r}: {error}") from None
    validate = getattr(instance, "validate", None)
    try:
        check_ranges(instance, prefix)  # the schema's RANGES (config/ranges.py), before its own cross-field checks
    except ValueError as error:
        raise ConfigError(f"{where}{error}") from None
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(f"{where}{error}") from None
    return instance


def _first_leaf(value: Mapping[str, Any], prefix: str) -> str:
    key, child = next(iter(value.items()))
    dotted = f"{prefix}.{key}"
    return _first_leaf(child, dotted) if isinstance(child, Mapping) and child else dotted


def _leaf_keys(schema_cls: Any, prefix: str) -> List[str]:
    """Every dotted key below `schema_cls` (sections recurse), e.g. ["solver.base_lr", "solver.steps", ...]."""
    keys = []
    hints = typing.get_type_hints(schema_cls)
    for f in dataclasses.fields(schema_cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        keys.extend(_leaf_keys(tp, dotted) if dataclasses.is_dataclass(tp) else [dotted])
    return keys


def from_dict(schema_cls: Type[T], data: Mapping[str, Any], *, source: str = "") -> T:
    """Validate a plain dict against `schema_cls` and build the typed instance (missing keys keep defaults).

    A schema may define `validate(self)` raising ValueError for cross-field checks; it runs after construction.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source + ': ' if source else ''}config must be a mapping, got {type(data).__name__}")
    return _build(schema_cls, data, "", f"{source}: " if source else "")


def load_config(
    schema_cls: Type[T], path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = (), *,
    base: Optional[Mapping[str, Any]] = None, base_source: str = "",
) -> T:
    """Defaults of `schema_cls` <- YAML file at `path` (with `_base_`) <- `overrides` ("a.b.c=value"), validated.

    base: a config as a dict (e.g. the one a checkpoint recorded) used instead of a file; base_source names it in
    errors. Raises ConfigError (one line) for a missing/invalid file, bad override syntax, unknown keys (with the
    closest valid key) and wrong types (key, expected type, value).
    """
    if path is not None and base is not None:
        raise ValueError("load_config: give a config file or a base dict, not both")
    if path is not None:
        data: Dict[str, Any] = load_yaml_with_bases(path)
        source = str(path)
    else:
        data, source = copy.deepcopy(dict(base or {})), base_source
    parsed = parse_overrides(overrides)
    if not parsed:
        return from_dict(schema_cls, data, source=source)
    # Validate the file alone first so that a file error is reported against the file, not the overrides.
    from_dict(schema_cls, data, source=source)
    # The overrides act together (data.train.ann_file=... before data.train.image_root=... is fine). An error of the
    # result names the override without which the config loads (else the last one: several are wrong).
    original = copy.deepcopy(data)
    for key, value in parsed:
        _apply_override(data, key, value)
    try:
        return from_dict(schema_cls, data, source="")
    except ConfigError as error:
        culprit = parsed[-1]
        for skipped in reversed(range(len(parsed))):
            trial = copy.deepcopy(original)
            for key, value in parsed[:skipped] + parsed[skipped + 1:]:
                _apply_override(trial, key, value)
            try:
                from_dict(schema_cls, trial, source="")
            except ConfigError:
                continue
            culprit = parsed[skipped]
            break
        raise ConfigError(f"override {culprit[0]}={culprit[1]!r}: {error}") from None


# -- output -------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain nested dict (tuples become lists) that load_config reads back to an equal config."""
    return _plain(cfg)


def dump_yaml(cfg: Any, path: Union[str, os.PathLike]) -> Path:
    """Write `cfg` (dataclass or dict) as YAML to `path` through the one output rule (io/outputs.py: atomic,
    checked, never onto an input or another run's config.yaml). Raises OutputError (one line) when it cannot."""

    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None))
