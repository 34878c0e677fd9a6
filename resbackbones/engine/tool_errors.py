"""What the command-line tools do when a run fails, in one place.

tools/train_cls.py and tools/train_det.py promise the same contract (tests and scripts rely on it): exit 2 with one
line "error: ..." on stderr for a user error (config, data, weights, an invalid value), exit 3 with the trainer's
message when training diverged (the last good checkpoint is kept), exit 130 with a resume hint on Ctrl-C, and the
DDP process group torn down on every path. Each tool used to carry its own copy of that tail, and the copies had
started to drift (only one unwrapped DataLoader-worker tracebacks); `run_tool` is the single copy.

The divergence side lives here too: one `TrainingDiverged` class raised by both trainers (re-exported by
engine.cls_trainer and engine.det_trainer), and `clip_and_check_grads`, the non-finite gradient check the loop
core's step (engine/loop.py) runs before the optimizer step.
"""
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Tuple, Type

import torch
from torch import nn

from ..utils.comm import cleanup
from ..utils.errors import TrainingDiverged


def kept_checkpoint_note(last: os.PathLike) -> str:
    """The divergence messages' statement about the last checkpoint (scripts parse "last good checkpoint is
    kept: PATH"): both trainers stop before writing a bad state, so the file on disk is the last good one."""
    return (f"the last good checkpoint is kept: {last}" if Path(last).is_file()
            else "no checkpoint was written yet")


def one_line(error: BaseException) -> str:
    """The error's message on one line, for "error: ..." on stderr.

    Multi-line messages are joined with "; ". An exception raised in a DataLoader worker arrives re-raised by the
    main process with the worker's whole traceback in its message ("Caught X in DataLoader worker process 0.
    Original Traceback ..."); the user needs only the original "Type: message" line at its end, without the type.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return "; ".join(lines) if lines else type(error).__name__


def run_tool(body: Callable[[], int], *, interrupt_hint: str,
             user_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a tool's main body and turn the expected failures into exit codes; returns the exit code.

    body() returns the exit code of a successful run (normally 0). Failures:
      TrainingDiverged               -> "error: <message>" on stderr, 3
      user_errors, ValueError        -> "error: <one_line(message)>" on stderr, 2 (ValueError: invalid option
                                        values reaching builders, such as a device name or amp on CPU)
      KeyboardInterrupt              -> interrupt_hint on stderr, 130
    Anything else is a bug and keeps its traceback. utils.comm.cleanup() runs on every path (it does
    nothing when no process group was started), so a failing DDP rank does not leave its group behind.
    """
    try:
        return body()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except (*user_errors, ValueError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupt_hint, file=sys.stderr)
        return 130
    finally:

        cleanup()


def clip_and_check_grads(model: nn.Module, max_norm: float = 0.0) -> Optional[str]:
    """After backward, without a GradScaler: None when every gradient is finite (then clipped to a total norm of
    max_norm when max_norm > 0, exactly as torch.nn.utils.clip_grad_norm_ does), else a short description of the
    problem ("total gradient norm inf, first non-finite gradient: <parameter name>"), gradients left unclipped.

    A finite loss can come with non-finite gradients (an overflow in backward, a huge learning rate); stepping on
    them writes NaN/inf into the weights. The caller raises TrainingDiverged before optimizer.step() instead, so
    the model in memory and the last checkpoint stay good. The total norm is computed once (clipping reuses it);
    the per-parameter search runs only on failure. Under fp16 AMP do not call this: inf gradients are how
    GradScaler detects overflow, and it skips that step and lowers the scale by itself.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return None
    grads = [p.grad for p in params]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        total = torch.nn.utils.get_total_norm(grads)
    else:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()).to(grads[0].device)
                                                      for g in grads]))
    if not torch.isfinite(total):
        named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        first = next((name for name, g in named if not torch.isfinite(g).all()), None)
        if first is not None:
            return f"total gradient norm {total.item()}, first non-finite gradient: {first}"
        # Every element finite, but their squares overflow: as diverged as an inf (the weights would jump by lr*1e19+).
        largest = max(named, key=lambda item: float(item[1].detach().abs().max()))[0]
        return f"total gradient norm {total.item()} (overflow), largest gradient: {largest}"
    if max_norm:
        if hasattr(torch.nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6: clip_grad_norm_ is exactly these two
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
    return None
