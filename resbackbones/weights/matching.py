"""Strict state-dict loading whose error names every missing/unexpected key and every shape mismatch."""
from typing import List, Mapping

import torch
from torch import nn

from .errors import WeightsError


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Raise WeightsError listing each missing key, unexpected key and layer whose shape differs (both shapes)."""
    expected = model.state_dict()
    problems: List[str] = []
    # BatchNorm fills a missing num_batches_tracked and FrozenBN drops it, so it is optional both ways.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"  {k}: model {tuple(expected[k].shape)} vs {source} {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
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
    """model.load_state_dict with a readable error. strict=False still refuses shape mismatches."""
    if strict:
        check_state_dict(model, state, source=source)
        return model.load_state_dict(state, strict=True)
    expected = model.state_dict()
    mismatched = {k: v for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)}
    if mismatched:
        lines = "\n".join(f"  {k}: model {tuple(expected[k].shape)} vs {source} {tuple(v.shape)}"
                          for k, v in mismatched.items())
        raise WeightsError(f"{source} does not match {type(model).__name__}: shape mismatches:\n{lines}")
    return model.load_state_dict(state, strict=False)
