"""Numeric ranges of config fields, declared once per schema and checked when a config is built.

    @dataclass
    class Solver:
        RANGES: ClassVar[Dict[str, str]] = {"lr": "(0, inf)", "gamma": "(0, 1]", "steps": "[0, inf)"}
        lr: float = 0.1
        gamma: float = 0.1
        steps: Tuple[int, ...] = (30, 60)

A range is an interval "[lo, hi]" with round brackets for open ends and inf for no bound. It applies to the number,
to every number of a tuple or list (nested too), and to an Optional field unless it is None. Every float must also be
finite (nan and inf are refused whatever the range), and every integer fit in int64. config.load_config / from_dict
check every dataclass that declares RANGES before its validate(); tests/test_config_ranges.py checks that every
numeric field of the tools' schemas declares one.
"""
import math
import re
from typing import Any, Iterator, Optional, Sequence, Tuple

from ..utils.errors import CocoEvalError

# No integer setting goes beyond int64 (torch, numpy and the checkpoint formats hold int64), whatever its range.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])$")


def parse_interval(spec: str) -> Tuple[float, float, bool, bool]:
    """"(0, 1]" -> (0.0, 1.0, low_closed=False, high_closed=True)."""
    match = _INTERVAL.match(spec.strip())
    if not match:
        raise ValueError(f"bad range {spec!r}: expected an interval such as '[0, 1]' or '(0, inf)'")
    open_, lo, hi, close = match.groups()
    return float(lo), float(hi), open_ == "[", close == "]"


def describe(spec: str) -> str:
    """Readable form: '>= 1', '> 0', 'in [0, 1)'."""
    lo, hi, lo_closed, hi_closed = parse_interval(spec)
    if math.isinf(hi):
        return f"{'>=' if lo_closed else '>'} {lo:g}" if not math.isinf(lo) else "finite"
    return f"in {spec.strip()}"


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)


def out_of_range(value: Any, spec: str) -> Optional[float]:
    """The first number of `value` outside `spec` (or not finite), else None."""
    lo, hi, lo_closed, hi_closed = parse_interval(spec)
    for number in _numbers(value):
        if not math.isfinite(number) or (isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX):
            return number
        below = number < lo or (number == lo and not lo_closed)
        above = number > hi or (number == hi and not hi_closed)
        if below or above:
            return number
    return None


def check_ranges(instance: Any, prefix: str) -> None:
    """ValueError naming the dotted key, the valid range and the value, for the first field of `instance` (a
    dataclass with RANGES) whose value is out of its range."""
    for name, spec in getattr(type(instance), "RANGES", {}).items():
        value = getattr(instance, name)
        bad = out_of_range(value, spec)
        if bad is not None:
            key = f"{prefix}.{name}" if prefix else name
            shown = value if not isinstance(value, (list, tuple)) else f"{list(value)} (item {bad!r})"
            raise ValueError(f"config key {key!r} must be {describe(spec)}, got {shown}")


def check_max_dets(max_dets: Sequence[int]) -> Tuple[int, int, int]:
    """COCOeval's maxDets as a tuple of three increasing positive ints; CocoEvalError naming the value otherwise
    (config.det checks test.max_dets with it when a config is built; evaluation/coco.py before every run)."""
    values = tuple(max_dets)
    if (len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
            or list(values) != sorted(set(values))):
        raise CocoEvalError(f"max_dets must be three increasing positive ints (COCOeval maxDets, e.g. [1, 10, 100]), "
                            f"got {list(values)}")
    return values  # type: ignore[return-value]
