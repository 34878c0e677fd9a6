"""Strict state-dict loading whose error names every missing/unexpected key and every shape mismatch.

    diff = diff_state_dict(model, state)   # the differences alone; each caller words its own error
    check_state_dict(model, state, source="w.safetensors")   # WeightsError listing them
"""
from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

import torch
from torch import nn

from .errors import WeightsError
from .integrity import check_dtypes

# BatchNorm fills a missing num_batches_tracked and FrozenBN drops it, so weights files may have it or not.
OPTIONAL_BUFFERS = ("num_batches_tracked",)

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class StateDictDiff:
    """How a state dict differs from a model's: `missing` (model keys it lacks, model order), `unexpected` (its keys
    the model lacks, its order), `reshaped` ((key, model shape, its shape) for keys in both, model order). All three
    empty: it loads strictly."""
    missing: List[str]
    unexpected: List[str]
    reshaped: List[Tuple[str, Shape, Shape]]


def diff_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                    optional: Sequence[str] = ()) -> StateDictDiff:
    """Compare `state` with model.state_dict(). Keys ending in one of `optional` (e.g. OPTIONAL_BUFFERS) are never
    counted missing or unexpected; their shapes are still compared."""
    expected = model.state_dict()
    optional = tuple(optional)

    def required(key: str) -> bool:
        return not (optional and key.endswith(optional))

    return StateDictDiff(
        missing=[k for k in expected if k not in state and required(k)],
        unexpected=[k for k in state if k not in expected and required(k)],
        reshaped=[(k, tuple(v.shape), tuple(state[k].shape)) for k, v in expected.items()
                  if k in state and tuple(v.shape) != tuple(state[k].shape)],
    )


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Raise WeightsError listing each missing key, unexpected key and layer whose shape differs (both shapes)."""
    diff = diff_state_dict(model, state, optional=OPTIONAL_BUFFERS)
    problems: List[str] = []
    missing, unexpected = diff.missing, diff.unexpected
    mismatched = [f"  {k}: model {mine} vs {source} {theirs}" for k, mine, theirs in diff.reshaped]
    if missing:
        problems.append(f"missing keys ({len(missing)}):\n" + "\n".join(f"  {k}" for k in missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}):\n" + "\n".join(f"  {k}" for k in unexpected))
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}):\n" + "\n".join(mismatched))
    if problems:
        raise WeightsError(f"{source} does not match {type(model).__name__}:\n" + "\n".join(problems))


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True,
                    source: str = "state dict"):
    """model.load_state_dict with a readable error. strict=False still refuses shape mismatches; a tensor of another
    kind than the model's (int8 / bool where it holds float) is refused, never cast (integrity.check_dtypes)."""
    check_dtypes(state, source, expected=model.state_dict())
    if strict:
        check_state_dict(model, state, source=source)
        return model.load_state_dict(state, strict=True)
    mismatched = diff_state_dict(model, state).reshaped
    if mismatched:
        lines = "\n".join(f"  {k}: model {mine} vs {source} {theirs}" for k, mine, theirs in mismatched)
        raise WeightsError(f"{source} does not match {type(model).__name__}: shape mismatches:\n{lines}")
    return model.load_state_dict(state, strict=False)
