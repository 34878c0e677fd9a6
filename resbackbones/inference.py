"""A fast inference path: norms folded into convs, channels_last, bf16/fp16 weights and activations where native.

    fast = rb.optimize_for_inference(model)        # model: backbone, Classifier, CIFAR, VGG; bf16 where native
    fast(images)                                   # same outputs as model.eval()(images) (bf16: to rounding)
    fast.precision, fast.precision_reason          # "bf16", "auto: the CPU has native bf16 (avx512_bf16)"
    rb.optimize_for_inference(model, dtype=torch.float32)   # force fp32 (within ~1e-4 of eager)

Folding y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta into the conv gives
w' = w * gamma / sqrt(var + eps), b' = beta + (b - mean) * gamma / sqrt(var + eps): one op instead of two, and
in channels_last the conv, bias and ReLU run as a single oneDNN primitive on CPU / cuDNN kernel on GPU.
(Loading a trained detector back from its checkpoint is resbackbones/evaluation/inference.py: load_detector.)
"""
import copy
from collections import OrderedDict
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from .layers import Conv2d
from .layers.blocks import _ResidualBlock
from .utils.amp import amp_dtype, resolve_amp

_FOLDABLE = (nn.BatchNorm2d, FrozenBatchNorm2d)
_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold an eval-mode BatchNorm2d / FrozenBatchNorm2d into `conv`'s weight and bias, in place."""
    eps = norm.eps
    mean, var = norm.running_mean, norm.running_var
    gamma = norm.weight if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias if norm.bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        # Compute in float64 so folding adds no error of its own beyond the final fp32 rounding.
        scale = gamma.double() / torch.sqrt(var.double() + eps)
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = beta.double() + (bias - mean.double()) * scale
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_norms(model: nn.Module) -> nn.Module:
    """Fold every foldable norm in `model` (in place): our Conv2d's own `.norm`, and nn.Conv2d -> BatchNorm2d pairs
    that follow each other in an nn.Sequential (torchvision-style VGG-BN). GroupNorm/SyncBN-in-training stay."""
    for module in model.modules():
        if isinstance(module, Conv2d) and isinstance(module.norm, _FOLDABLE):
            fold_norm_into_conv(module, module.norm)
            module.norm = None
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (second_name, second) in zip(children, children[1:]):
                if type(first) is nn.Conv2d and isinstance(second, _FOLDABLE):
                    fold_norm_into_conv(first, second)
                    setattr(module, second_name, nn.Identity())
    return model


def _mkldnn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _mkldnn_bf16_ready() -> bool:
    # oneDNN's bf16 weight reorder needs avx512bw/vl/dq or avx_ne_convert; on an AVX2-only CPU it raises, so bf16
    # asked for explicitly runs the plain (slow, emulated) conv there instead of crashing.
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


class MkldnnConv(nn.Module):
    """A folded conv (+ optional ReLU) run as one oneDNN primitive on a pre-packed weight (CPU only).

    oneDNN picks its weight layout from the input shape; the weight is packed into that layout on the first call
    with each input shape (kept for the last few shapes) instead of being reordered on every call. The ReLU (and
    in blocks the residual add) run as post-ops of the conv: no separate pass over the activations.
    """

    max_cached_shapes = 4

    def __init__(self, conv: nn.Conv2d, *, relu: bool):
        super().__init__()
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.attr = "relu" if relu else "none"
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)
        self.out_channels = conv.out_channels
        # input shape -> opaque oneDNN tensor; not saved, rebuilt on demand.
        self._packed: "OrderedDict[Tuple[int, ...], torch.Tensor]" = OrderedDict()

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None or packed.dtype != self.weight.dtype:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(key)
            )
            self._packed[key] = packed
            while len(self._packed) > self.max_cached_shapes:
                self._packed.popitem(last=False)
        return packed

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        # Moved off the CPU (or another dtype) after packing: plain conv on the same folded weights.
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu_(out) if self.attr == "relu" else out

    def _use_mkldnn(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and self.weight.device.type == "cpu" and x.dtype == self.weight.dtype
                and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _mkldnn_bf16_ready())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_mkldnn(x):
            return self._eager(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups, self.attr,
            [], "",
        )

    def add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + other) in one primitive."""
        if not self._use_mkldnn(x):
            return F.relu_(self._eager(x) + other)  # add_relu is only used on convs without their own ReLU
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self._packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, "relu", [], "",
        )

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}, groups={self.groups}, post_op={self.attr}"


class MkldnnResidualBlock(nn.Module):
    """BasicBlock / Bottleneck (or plain twin) whose convs are MkldnnConv and whose add + ReLU fuse into the last."""

    def __init__(self, block: _ResidualBlock):
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
        self.residual = block.residual
        self.branch = nn.Sequential(*[MkldnnConv(c, relu=True) for c in convs[:-1]])
        self.last = MkldnnConv(convs[-1], relu=not self.residual)
        shortcut = block.shortcut
        self.shortcut = MkldnnConv(shortcut, relu=False) if isinstance(shortcut, Conv2d) else shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if not self.residual:
            return self.last(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return self.last.add_relu(out, identity)


def _conv_fusable(conv: nn.Module) -> bool:
    return (
        isinstance(conv, Conv2d) and conv.norm is None
        and (conv.activation is None or isinstance(conv.activation, nn.ReLU))
        and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and conv.weight.device.type == "cpu"
        and conv.weight.dtype in (torch.float32, torch.bfloat16)
    )


def _block_fusable(block: _ResidualBlock) -> bool:
    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    shortcut_ok = block.shortcut is None or not isinstance(block.shortcut, Conv2d) or _conv_fusable(block.shortcut)
    return all(_conv_fusable(c) for c in convs) and shortcut_ok


def fuse_mkldnn(model: nn.Module) -> nn.Module:
    """Replace folded blocks and convs of `model` (in place) by oneDNN fused, pre-packed modules (CPU fp32/bf16)."""
    for name, child in list(model.named_children()):
        if isinstance(child, _ResidualBlock) and _block_fusable(child):
            setattr(model, name, MkldnnResidualBlock(child))
        elif _conv_fusable(child):
            setattr(model, name, MkldnnConv(child, relu=child.activation is not None))
        else:
            fuse_mkldnn(child)
    return model


class InferenceModel(nn.Module):
    """Wraps a folded eval model: casts inputs to channels_last (+ dtype) and outputs back to the input's dtype,
    so it is a drop-in replacement whatever the model returns (a tensor, or a dict/list of tensors).

    precision: "fp32" | "bf16" | "fp16", the dtype of its weights and activations; precision_reason: why.
    """

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype], reason: str = ""):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.precision = _PRECISION[dtype or torch.float32]
        self.precision_reason = reason

    def extra_repr(self) -> str:
        return f"precision={self.precision} ({self.precision_reason})" if self.precision_reason else \
            f"precision={self.precision}"

    def forward(self, images: torch.Tensor) -> Any:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"the optimized model takes one batch tensor [N, C, H, W], got {type(images).__name__}")
        out_dtype = images.dtype
        memory_format = torch.channels_last if images.dim() == 4 else torch.preserve_format
        x = images.to(dtype=self.dtype or images.dtype, memory_format=memory_format)  # one copy for both
        with torch.inference_mode():
            return _cast(self.model(x), out_dtype)


def _cast(output: Any, dtype: torch.dtype) -> Any:
    if isinstance(output, torch.Tensor):
        return output.to(dtype) if output.is_floating_point() else output
    if isinstance(output, dict):
        return {k: _cast(v, dtype) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_cast(v, dtype) for v in output)
    return output


def inference_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> Tuple[Optional[torch.dtype], str]:
    """The reduced dtype to run inference in on `device` (None = fp32) and why.

    "auto": utils.amp.resolve_amp's choice, the one training makes: bf16 on CPUs with amx_bf16 / avx512_bf16
    and on CUDA GPUs of compute capability >= 8.0, fp16 on older GPUs, fp32 otherwise.
    None / torch.float32: fp32; torch.bfloat16 / torch.float16: as given.
    """
    if isinstance(dtype, str):
        if dtype != "auto":
            raise ValueError(f"optimize_for_inference: dtype must be 'auto', None, torch.float32, torch.bfloat16 or "
                             f"torch.float16, got {dtype!r}")
        amp, reason = resolve_amp("auto", device)
        return amp_dtype(amp), reason
    if dtype not in (None,) + tuple(_PRECISION):
        raise ValueError(f"optimize_for_inference: dtype must be 'auto', None, torch.float32, torch.bfloat16 or "
                         f"torch.float16, got {dtype!r}")
    return (None if dtype in (None, torch.float32) else dtype), "set by the caller"


def optimize_for_inference(model: nn.Module, dtype: Union[str, torch.dtype, None] = "auto", *, fuse: bool = True
                           ) -> InferenceModel:
    """A copy of `model` for inference: eval mode, every BN/FrozenBN folded into its conv, channels_last weights,
    weights and activations in `dtype`:
    "auto" (default) bf16 where the hardware has it natively (CPU amx_bf16 / avx512_bf16, CUDA compute
    capability >= 8.0; fp16 on older GPUs), else fp32 - see inference_dtype; None or torch.float32: fp32;
    torch.bfloat16 / torch.float16: that. The choice is in the result's .precision and .precision_reason.

    fuse (CPU, fp32/bf16): run each conv + ReLU (+ residual add) as one oneDNN primitive on pre-packed weights.
    The original model is left untouched. Output: same structure as model(images), cast back to the input dtype.
    fp32 outputs match the eager model within ~1e-4; bf16 agrees on top-1 for >= 99 % of inputs.
    """
    if isinstance(model, GeneralizedRCNN):
        raise TypeError(f"optimize_for_inference takes a backbone or classifier (a batch tensor in), not a detector "
                        f"({type(model).__name__}); for a fast detector use predict.py / eval_coco.py --amp auto, or "
                        f"tools/export_detector.py")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype, reason = inference_dtype(dtype, device)
    fast = copy.deepcopy(model).eval()
    for param in fast.parameters():
        param.requires_grad_(False)
    fold_norms(fast)
    fast = fast.to(memory_format=torch.channels_last)
    if dtype is not None:
        fast = fast.to(dtype)
    if fuse and _mkldnn_ready():
        fuse_mkldnn(fast)
    return InferenceModel(fast, dtype, reason).eval()
