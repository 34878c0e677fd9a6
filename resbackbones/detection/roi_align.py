"""Multi-level RoIAlign whose CPU backward is a sparse matrix product, with torchvision's exact sampling rule.

Why by hand: torchvision's CPU `_roi_align_backward` is one thread and recomputes the bilinear weights for every
channel; in a Mask R-CNN R50-FPN training step on CPU it alone took ~26 % of the step (0.85 s of 3.3 s).
RoIAlign is linear in the features: every output bin is a fixed weighted sum of at most
sampling_ratio^2 * 4 feature pixels. Writing those weights once per RoI as a sparse matrix S
[R * P * P, sum_l N * H_l * W_l] makes forward S @ F and backward S^T @ G, where F holds every level's features as
rows of C channels (channels_last order, so a channels_last input is read without a copy). The backward drops from
0.45 s to 0.05 s for 512 RoIs x 256 channels at 7x7 (benchmarks/detection.py measures the whole step).

The sampling rule (bin grid, the -1 / size bounds, clamping at the border, min RoI size 1, aligned=False) is
torchvision's roi_align CPU kernel's, so outputs agree to float rounding (the summation order differs).
bfloat16 / float16 features (CPU autocast) are read into the float32 rows the product needs anyway (one pass that
also does the level concatenation), the taps are computed from float32 RoIs and the sums accumulate in float32: the
result is torchvision's autocast roi_align (float32 maths, output in the features' dtype) up to float rounding.
Used on CPU for float32/float64/bfloat16/float16 with a fixed sampling_ratio > 0 when a gradient will flow back;
other cases (inference, CUDA, adaptive sampling ratio, scripting/tracing) go to torchvision's op unchanged.
"""
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

# One feature level: (feature map [N, C, H, W], spatial scale = 1 / stride).
Level = Tuple[Tensor, float]
_SPARSE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _axis_taps(coord: Tensor, size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample coordinates along one axis -> (low index, high index, low weight, high weight, in-range mask).

    Mirrors torchvision's bilinear_interpolate: samples beyond [-1, size] contribute 0, coordinates <= 0 snap to 0,
    and samples in the last pixel row/column read that pixel only.
    """
    valid = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0)
    low = coord.floor().long()
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_end, low, low + 1)
    coord = torch.where(at_end, low.to(coord.dtype), coord)
    frac = coord - low
    return low, high, 1.0 - frac, frac, valid


def bilinear_taps(rois: Tensor, spatial_scale: float, output_size: Tuple[int, int], sampling_ratio: int,
                  height: int, width: int) -> Tuple[Tensor, Tensor]:
    """RoIs [R, 5] (batch index, x1, y1, x2, y2 in input pixels) -> the pixels and weights every output bin reads.

    Returns (index [R * PH * PW, T], weight [R * PH * PW, T]) with T = sampling_ratio^2 * 4 taps per bin; index is
    the flat position batch * H * W + y * W + x in the level's [N * H * W] rows; weights include the 1 / count
    average, out-of-range samples have weight 0.
    """
    dtype = rois.dtype
    ph, pw = output_size
    batch = rois[:, 0].long()
    x1, y1 = rois[:, 1] * spatial_scale, rois[:, 2] * spatial_scale
    roi_w = (rois[:, 3] * spatial_scale - x1).clamp(min=1.0)
    roi_h = (rois[:, 4] * spatial_scale - y1).clamp(min=1.0)
    bin_w, bin_h = roi_w / pw, roi_h / ph
    sub = torch.arange(sampling_ratio, dtype=dtype, device=rois.device) + 0.5

    def sample_coords(start: Tensor, bin_size: Tensor, bins: int) -> Tensor:  # [R, bins, sampling_ratio]
        grid = torch.arange(bins, dtype=dtype, device=rois.device)
        return (start[:, None, None] + grid[None, :, None] * bin_size[:, None, None]
                + sub[None, None, :] * bin_size[:, None, None] / sampling_ratio)

    y_low, y_high, y_wlow, y_whigh, y_valid = _axis_taps(sample_coords(y1, bin_h, ph), height)
    x_low, x_high, x_wlow, x_whigh, x_valid = _axis_taps(sample_coords(x1, bin_w, pw), width)
    # Four corners per sample, in torchvision's order (y_low x_low, y_low x_high, y_high x_low, y_high x_high).
    y_idx = torch.stack([y_low, y_low, y_high, y_high], -1)
    x_idx = torch.stack([x_low, x_high, x_low, x_high], -1)
    y_w = torch.stack([y_wlow, y_wlow, y_whigh, y_whigh], -1) * y_valid[..., None]
    x_w = torch.stack([x_wlow, x_whigh, x_wlow, x_whigh], -1) * x_valid[..., None]

    # [R, PH, s, 4] x [R, PW, s, 4] -> [R, PH, PW, s_y, s_x, 4]
    def along_y(t: Tensor) -> Tensor:
        return t[:, :, None, :, None, :]

    def along_x(t: Tensor) -> Tensor:
        return t[:, None, :, None, :, :]

    weight = along_y(y_w) * along_x(x_w) / float(sampling_ratio * sampling_ratio)
    index = along_y(y_idx) * width + along_x(x_idx) + (batch * (height * width))[:, None, None, None, None, None]
    rows, taps = rois.shape[0] * ph * pw, sampling_ratio * sampling_ratio * 4
    return index.reshape(rows, taps), weight.reshape(rows, taps)


def _sparse(rows: Tensor, cols: Tensor, values: Tensor, shape: Tuple[int, int]) -> Tensor:
    # Duplicate (row, col) pairs are summed by the product, so no coalesce (a sort of every tap) is needed.
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sparse product runs in for features of `dtype`: float64 stays, everything else float32 (bf16 /
    fp16 sums of up to 16 taps would lose the precision torchvision's kernel keeps)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_rows(tensors: List[Tensor], dtype: torch.dtype) -> Tensor:
    """[N, C, H, W] tensors -> one [sum N * H * W, C] matrix of `dtype` (rows in NHWC order).

    One tensor already of `dtype` in channels_last memory is returned as a view (no copy); otherwise each tensor is
    copied once into its slice, converting the dtype in the same pass.
    """
    channels = tensors[0].shape[1]
    if len(tensors) == 1 and tensors[0].dtype == dtype:
        return tensors[0].permute(0, 2, 3, 1).reshape(-1, channels)
    total = sum(t.shape[0] * t.shape[2] * t.shape[3] for t in tensors)
    rows = torch.empty(total, channels, dtype=dtype, device=tensors[0].device)
    start = 0
    for t in tensors:
        n, _, h, w = t.shape
        rows[start:start + n * h * w].view(n, h, w, channels).copy_(t.permute(0, 2, 3, 1))
        start += n * h * w
    return rows


class _SparseRoIAlign(torch.autograd.Function):
    """out [R, C, PH, PW] = S @ F over every level's features, grads via S^T (no grad to the box coordinates,
    as in torchvision: proposals are detached). S and the product are in the weights' dtype (float32 / float64);
    the output and the feature gradients are in the features' dtype."""

    @staticmethod
    def forward(ctx, index: Tensor, weight: Tensor, output_size: Tuple[int, int], *features: Tensor) -> Tensor:
        channels = features[0].shape[1]
        flat = _as_rows(list(features), weight.dtype)
        row = torch.arange(index.shape[0], device=index.device).repeat_interleave(index.shape[1])
        ctx.save_for_backward(index, weight, row)
        ctx.shapes = [f.shape for f in features]
        ctx.dtype = features[0].dtype
        ctx.total = flat.shape[0]
        with torch.autocast("cpu", enabled=False):  # autocast would run the product itself in bf16
            out = torch.sparse.mm(_sparse(row, index.reshape(-1), weight.reshape(-1), (index.shape[0], flat.shape[0])),
                                  flat)
        num_rois = index.shape[0] // (output_size[0] * output_size[1])
        return out.reshape(num_rois, output_size[0], output_size[1], channels).permute(0, 3, 1, 2).to(ctx.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, weight, row = ctx.saved_tensors
        grad_rows = _as_rows([grad], weight.dtype)
        with torch.autocast("cpu", enabled=False):
            flat = torch.sparse.mm(_sparse(index.reshape(-1), row, weight.reshape(-1), (ctx.total, index.shape[0])),
                                   grad_rows)
        grads, start = [], 0
        for n, c, h, w in ctx.shapes:
            grads.append(flat[start:start + n * h * w].reshape(n, h, w, c).permute(0, 3, 1, 2).to(ctx.dtype))
            start += n * h * w
        return (None, None, None, *grads)


def sparse_roi_align(levels: List[Level], rois: Tensor, level_of_roi: Tensor, output_size: Tuple[int, int],
                     sampling_ratio: int) -> Tensor:
    """RoIAlign (aligned=False) of rois [R, 5] from their assigned levels -> [R, C, PH, PW] (CPU).

    levels: [(features [N, C, H_l, W_l], spatial_scale_l)]; level_of_roi [R] in 0..len(levels)-1. rois float32 or
    float64: the taps and the sums are computed in that dtype; the output has the features' dtype.
    """
    bins = output_size[0] * output_size[1]
    taps = sampling_ratio * sampling_ratio * 4
    index = torch.empty(rois.shape[0], bins, taps, dtype=torch.long, device=rois.device)
    weight = torch.empty(rois.shape[0], bins, taps, dtype=rois.dtype, device=rois.device)
    offset = 0  # of the level's first row in the concatenated features
    for level, (feature, scale) in enumerate(levels):
        n, _, h, w = feature.shape
        # Taps of every RoI at every level would be wasted work: each level computes the taps of its own RoIs.
        idx = torch.where(level_of_roi == level)[0]
        level_index, level_weight = bilinear_taps(rois[idx], scale, output_size, sampling_ratio, h, w)
        index[idx] = (level_index + offset).view(-1, bins, taps)
        weight[idx] = level_weight.view(-1, bins, taps)
        offset += n * h * w
    return _SparseRoIAlign.apply(index.view(-1, taps), weight.view(-1, taps), tuple(output_size),
                                 *[f for f, _ in levels])


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same level mapping, scales and arguments) with the sparse CPU kernel.

    forward: features {name: [N, C, H_l, W_l]}, boxes list of [R_i, 4] xyxy input pixels, image_shapes
    -> [sum R_i, C, PH, PW], RoIs in the order of `boxes`.
    """

    def _use_sparse(self, features: List[Tensor]) -> bool:
        """The sparse kernel only where a backward will follow: its point is the backward's speed. Without one
        (evaluation, predict) torchvision's kernel runs, the op the exported .pt and .pt2 files call, so this op
        gives eager inference and the exported files the same numbers (its summation order differs from the
        sparse product's). With the exported graphs in the eager batch's memory layout too (deploy/scriptable.py),
        .pt and .pt2 give the eager detections bit for bit."""
        f = features[0]
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in features)):
            return False
        return (not torch.jit.is_scripting() and not torch.jit.is_tracing() and f.device.type == "cpu"
                and all(x.dtype in _SPARSE_DTYPES and x.dtype == f.dtype for x in features)
                and self.sampling_ratio > 0)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if not self._use_sparse(features):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                          self.canonical_level)
        # RoI corners in float32 even for bf16 features: bf16 would move a 500-pixel coordinate by up to 2 px.
        rois = _convert_to_roi_format(boxes).to(compute_dtype(features[0].dtype))
        if len(features) == 1:
            level_of_roi = torch.zeros(rois.shape[0], dtype=torch.long)
        else:
            level_of_roi = self.map_levels(boxes).long()
        return sparse_roi_align(list(zip(features, self.scales)), rois, level_of_roi, self.output_size,
                                self.sampling_ratio)
