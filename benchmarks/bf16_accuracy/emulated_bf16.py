"""Run a tool with bf16 autocast whose matrix products are EMULATED in float32 (same numbers as native bf16 kernels,
fp32 speed): for CPUs without amx_bf16 / avx512_bf16, where PyTorch's bf16 convolutions are 15-40x slower than fp32
(docs/results/bf16_accuracy/README.md), too slow for an accuracy study.

    python benchmarks/bf16_accuracy/emulated_bf16.py tools/train_det.py --config C train.amp=bf16 ...

Under torch.autocast("cpu", bfloat16), the ops of autocast's CPU lower_precision_fp list (conv1d/2d/3d,
conv_transpose1d/2d/3d, linear, mm, bmm, matmul, addmm, baddbmm, addbmm, prelu) cast their floating inputs to bf16
and return bf16; oneDNN / AMX multiply bf16 inputs and accumulate in float32. Here the same ops round their inputs
to bf16, compute in float32 (autocast off) and round the result to bf16: bf16 operands, fp32 accumulation, bf16
output, as the native kernels (accumulation order aside). Everything else is untouched: it runs under the real
autocast on the real bf16 tensors (GroupNorm, pooling, interpolation, additions, the fp32 lists and the library's
own fp32 islands). Gradients flow through the casts, so the backward sees the same bf16 roundings of the forward
operands; the backward products themselves accumulate in float32 and their input-gradient is rounded to bf16 by the
cast's backward, as autograd does for the native op.

This is a benchmark tool, not a library feature: the study labels such cells precision "bf16emu". With
BF16EMU_CONTROL=1 it runs the control instead (precision "fp32ctl", class RoundImageOnly).
"""
import os
import runpy
import sys

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BF16 = torch.bfloat16
LOWP_OPS = {
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear, F.prelu,
    torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d,
    torch.mm, torch.bmm, torch.matmul, torch.addmm, torch.baddbmm, torch.addbmm,
    torch.Tensor.mm, torch.Tensor.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
    torch.Tensor.addmm, torch.Tensor.baddbmm, torch.Tensor.addbmm,
}


def _round(x):
    """A floating tensor -> its bf16 rounding, held in float32 (other arguments unchanged)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64:
        return x.to(BF16).float()
    if isinstance(x, (list, tuple)):
        return type(x)(_round(v) for v in x)
    return x


def _float(x):
    """bf16 tensors -> float32 (no rounding of float32 ones)."""
    if isinstance(x, torch.Tensor) and x.dtype == BF16:
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_float(v) for v in x)
    return x


class EmulatedBF16(TorchFunctionMode):
    """While active and CPU autocast (bf16) is enabled, the lower_precision_fp ops run as bf16-rounded fp32."""

    calls = 0

    def __init__(self, round_inputs: bool = True, round_output: bool = True):
        """round_inputs / round_output False: that half of the bf16 rounding is left out (ablations only)."""
        super().__init__()
        self.round_inputs, self.round_output = round_inputs, round_output

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in LOWP_OPS and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == BF16
                and any(isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.is_floating_point()
                        and a.dtype != torch.float64 for a in args)):
            EmulatedBF16.calls += 1
            with torch.autocast("cpu", enabled=False):
                if self.round_inputs:
                    args, kwargs = _round(args), {k: _round(v) for k, v in kwargs.items()}
                else:
                    args, kwargs = _float(args), {k: _float(v) for k, v in kwargs.items()}
                out = func(*args, **kwargs)
            if not isinstance(out, torch.Tensor):
                return out
            return out.to(BF16) if self.round_output else out
        return func(*args, **kwargs)


class RoundImageOnly(TorchFunctionMode):
    """The control run (precision "fp32ctl"): fp32 throughout, but the image entering the stem (the convolution
    with 3 input channels) is rounded to bf16, one perturbation of ~0.2 % of the input. It measures how far a run
    moves from its fp32 twin (same seed) from a rounding that cannot matter: the floor under which a same-seed
    fp32-vs-bf16 difference is not evidence of harm (see docs/results/bf16_accuracy/README.md)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d) and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and args[1].dim() == 4 and args[1].shape[1] == 3 and args[0].dtype == torch.float32:
            args = (args[0].to(BF16).float(),) + tuple(args[1:])
        return func(*args, **kwargs)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: emulated_bf16.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` does
    control = os.environ.get("BF16EMU_CONTROL") == "1"
    print("emulated_bf16: " + ("control: fp32, the stem's input image rounded to bf16" if control else
                               "bf16 autocast products emulated in float32 (bf16 operands and outputs)"), flush=True)
    with RoundImageOnly() if control else EmulatedBF16():
        try:
            runpy.run_path(script, run_name="__main__")
        finally:
            print(f"emulated_bf16: {EmulatedBF16.calls} emulated products", flush=True)


if __name__ == "__main__":
    main()
