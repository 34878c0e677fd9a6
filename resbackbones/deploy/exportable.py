"""The whole detector (resize + normalise, backbone, FPN, RPN, RoI heads, NMS, mask paste) as one graph that
torch.export captures with a dynamic image height and width, for `.pt2` and the dynamo ONNX exporter.

torchvision's GeneralizedRCNN cannot be captured as it is (docs/dev/deploy_plan.md): after every NMS the number of
boxes is data-dependent, and its post-processing branches on that number (`batched_nms`'s `if boxes.numel() == 0`,
`remove_small_boxes` / score filters by `torch.where(...)[0]`, MultiScaleRoIAlign's per-level `where`,
`paste_masks_in_image`'s Python loop over detections). This module computes the same detections with fixed-size
intermediates instead: a box that torchvision would drop (small, under the score threshold, suppressed by NMS) keeps
its row with score -inf, so it sorts after every kept box and can never suppress one; every shape after the RPN
head is a constant, and the only data-dependent sizes are the resized image's (taken as data, see _resize) and the
final number of detections, taken once at the very end. NMS and RoIAlign stay torchvision's registered ops
(`torchvision::nms` has a fake kernel with an unbacked output size, and onnxscript's torchlib translates both ops to
ONNX NonMaxSuppression / RoiAlign), so no custom op is needed.

ExportableDetector(model)(image [3, H, W] float RGB in [0, 1]) -> (boxes [K, 4] xyxy in input pixels, labels [K]
int64, scores [K], masks [K, 1, H, W] probabilities if the model has a mask head); one image per call.
"""
import math
from typing import List, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.rpn import concat_box_prediction_layers

from ..detection.heads import RoIPool

MIN_RESIZED, MAX_RESIZED = 32, 8192  # the network input's sides (after the resize) the graph is captured for


def _masked_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Per-group NMS as a keep mask [N] (bool), for boxes [N, 4], scores [N] (-inf: already dropped), groups [N].

    torchvision's batched_nms returns the kept indices and first asks `boxes.numel() == 0`, a guard on a
    data-dependent size that torch.export refuses; here the kept indices go straight into a mask of the input's
    size, so nothing downstream depends on how many were kept. Same coordinate trick (offset each group's boxes
    beyond the others), without the empty branch: the `max` runs on one extra 0 so it is defined for N == 0."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (groups.to(boxes) * (top + 1))[:, None]
    keep = torchvision.ops.nms(shifted, scores, iou_threshold)
    return torch.zeros_like(scores, dtype=torch.bool).index_fill(0, keep, True)


def _clip(boxes: Tensor, height, width) -> Tensor:
    """boxes [..., 4] clipped to [0, width] x [0, height] (torchvision's clip_boxes_to_image)."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """remove_small_boxes as a mask [N]."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def _interpolation_weights(start: Tensor, end: Tensor, length: int, size) -> Tensor:
    """[K, size, length]: row p of box k holds the bilinear weights (align_corners=False) that F.interpolate of a
    `length`-long padded mask row onto the integer box [start, end] (inclusive) gives image pixel p; zero outside
    the box. The weights of torchvision's paste_mask_in_image, for every detection at once."""
    extent = (end - start + 1).clamp(min=1).to(torch.float32)  # paste_mask_in_image's max(w, 1)
    pixel = torch.arange(size, device=start.device)
    offset = (pixel[None, :] - start[:, None]).to(torch.float32)  # [K, size]
    scale = length / extent  # upsample's float input/output ratio
    source = (scale[:, None] * (offset + 0.5) - 0.5).clamp(min=0)
    low = source.floor().clamp(max=length - 1)
    frac = (source - low).clamp(0, 1)
    high = (low + 1).clamp(max=length - 1)
    taps = torch.arange(length, device=start.device, dtype=torch.float32)
    weights = ((taps == low[..., None]).to(torch.float32) * (1 - frac)[..., None]
               + (taps == high[..., None]).to(torch.float32) * frac[..., None])
    inside = (pixel[None, :] >= start[:, None]) & (pixel[None, :] <= end[:, None])
    return weights * inside[..., None].to(torch.float32)


def paste_masks(masks: Tensor, boxes: Tensor, height, width) -> Tensor:
    """torchvision's paste_masks_in_image without its Python loop over detections (a loop over a data-dependent
    count cannot be captured): masks [K, 1, M, M], boxes [K, 4] in image pixels -> [K, 1, height, width].
    Bilinear resizing is separable, so each pasted mask is Wy @ padded_mask @ Wx^T with the weight matrices above."""
    padded = nn.functional.pad(masks[:, 0], (1, 1, 1, 1))
    size = masks.shape[-1]
    scale = float(size + 2) / size  # expand_masks / expand_boxes: the mask grows by one pixel on each side
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0, x1 = (center_x - half_w).to(torch.int64), (center_x + half_w).to(torch.int64)
    y0, y1 = (center_y - half_h).to(torch.int64), (center_y + half_h).to(torch.int64)
    wx = _interpolation_weights(x0, x1, size + 2, width)  # [K, W, M+2]
    wy = _interpolation_weights(y0, y1, size + 2, height)  # [K, H, M+2]
    return torch.bmm(wy, torch.bmm(padded, wx.transpose(1, 2)))[:, None]


class ExportableDetector(nn.Module):
    """A build_detector / deployable() detector's modules, run with fixed-size post-processing (module docstring).

    The pooler scales are read from one eager run on a dummy image at construction, as torchvision infers them
    from the first batch: in the graph they would be guards on the image size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model = model.eval()
        t, rpn, heads = model.transform, model.rpn, model.roi_heads
        with torch.no_grad():  # sets the poolers' scales
            size = int(t.min_size[-1])
            model([torch.zeros(3, size, size)])
        self.backbone, self.rpn_head, self.box_head, self.box_predictor = (
            model.backbone, rpn.head, heads.box_head, heads.box_predictor)
        self.has_mask = heads.has_mask()
        if self.has_mask:
            self.mask_head, self.mask_predictor = heads.mask_head, heads.mask_predictor
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32)[:, None, None], persistent=False)
        self.bgr = getattr(t, "input_format", "RGB") == "BGR"
        # The eager batch's layout: NHWC convolutions round differently from NCHW ones (deploy/scriptable.py).
        self.channels_last = bool(getattr(t, "channels_last", False))
        self.min_size, self.max_size = float(t.min_size[-1]), float(t.max_size)
        self.size_divisible = int(t.size_divisible)
        for i, anchors in enumerate(rpn.anchor_generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{i}", anchors.float(), persistent=False)
        self.num_levels = len(rpn.anchor_generator.cell_anchors)
        self.rpn_coder, self.box_coder = rpn.box_coder, heads.box_coder
        self.pre_nms_top_n, self.post_nms_top_n = rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"]
        self.rpn_nms, self.rpn_min_size, self.rpn_score = rpn.nms_thresh, rpn.min_size, rpn.score_thresh
        self.score_thresh, self.nms_thresh = heads.score_thresh, heads.nms_thresh
        self.detections_per_img = heads.detections_per_img
        self.box_pool = self._pooler(heads.box_roi_pool)
        self.mask_pool = self._pooler(heads.mask_roi_pool) if self.has_mask else None

    @staticmethod
    def _pooler(pool) -> dict:
        if isinstance(pool, RoIPool):  # VGG-16's max pooling of one map: its stride is known, no scale to infer
            return {"names": list(pool.featmap_names), "size": tuple(pool.output_size), "max": True,
                    "scales": [1.0 / pool.stride]}
        scales = [float(s) for s in pool.scales]
        mapper = pool.map_levels
        return {"names": list(pool.featmap_names), "size": tuple(pool.output_size), "ratio": int(pool.sampling_ratio),
                "scales": scales, "k_min": int(mapper.k_min), "k_max": int(mapper.k_max), "s0": int(mapper.s0),
                "lvl0": int(mapper.lvl0), "eps": float(mapper.eps)}

    def _roi_align(self, features, boxes: Tensor, pool: dict) -> Tensor:
        """MultiScaleRoIAlign for one image: every RoI pooled at every level, then the level LevelMapper picks
        kept (torchvision gathers each level's RoIs by `where(levels == l)[0]`, a data-dependent size)."""
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        maps = [features[name] for name in pool["names"]]
        if pool.get("max"):
            return torchvision.ops.roi_pool(maps[0], rois, pool["size"], pool["scales"][0])
        if len(maps) == 1:
            return torchvision.ops.roi_align(maps[0], rois, pool["size"], pool["scales"][0], pool["ratio"])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        level = torch.floor(pool["lvl0"] + torch.log2(area.sqrt() / pool["s0"]) + pool["eps"])
        level = (level.clamp(min=pool["k_min"], max=pool["k_max"]) - pool["k_min"]).to(torch.int64)
        out = None
        for i, (fmap, scale) in enumerate(zip(maps, pool["scales"])):
            pooled = torchvision.ops.roi_align(fmap, rois, pool["size"], scale, pool["ratio"])
            pooled = pooled * (level == i).to(pooled.dtype)[:, None, None, None]
            out = pooled if out is None else out + pooled
        return out

    def _resize(self, image: Tensor) -> Tensor:
        """torchvision's eager resize: scale = min(min_size / short side, max_size / long side) in float64, output
        floor(side * scale). The output size is taken as data (`.item()`, an unbacked size checked to lie in
        [MIN_RESIZED, MAX_RESIZED]) rather than as the symbolic floor(h * Min(s / Min(h, w), S / Max(h, w))): with
        that expression in every later shape, sympy made the capture take minutes and torch.export.load as long."""
        h, w = image.shape[-2:]
        hh = image.new_zeros((), dtype=torch.float64) + h
        ww = image.new_zeros((), dtype=torch.float64) + w
        scale = torch.minimum(self.min_size / torch.minimum(hh, ww), self.max_size / torch.maximum(hh, ww))
        out_h = torch.floor(hh * scale).to(torch.int64).item()
        out_w = torch.floor(ww * scale).to(torch.int64).item()
        for side in (out_h, out_w):
            torch._check(side >= MIN_RESIZED)
            torch._check(side <= MAX_RESIZED)
        return nn.functional.interpolate(image[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]

    def _anchors(self, features: List[Tensor], height, width) -> Tensor:
        """AnchorGenerator for one padded image of height x width (strides as torchvision computes them)."""
        out = []
        for i, fmap in enumerate(features):
            gh, gw = fmap.shape[-2:]
            sx = torch.arange(gw, device=fmap.device, dtype=torch.int64) * (width // gw)
            sy = torch.arange(gh, device=fmap.device, dtype=torch.int64) * (height // gh)
            yy, xx = torch.meshgrid(sy, sx, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack((xx, yy, xx, yy), dim=1)
            base = getattr(self, f"cell_anchors_{i}")
            out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(out)

    def _proposals(self, batch: Tensor, features: List[Tensor], height, width) -> Tuple[Tensor, Tensor]:
        """RPN for one image: (proposals [P, 4], valid [P] bool), P = min(post_nms_top_n, levels * pre_nms_top_n)."""
        objectness, deltas = self.rpn_head(features)
        counts = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        anchors = self._anchors(features, batch.shape[-2], batch.shape[-1])
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.rpn_coder.decode_single(deltas, anchors).reshape(-1, 4)
        objectness = objectness.reshape(-1)
        # Per-level top-k over the level's scores padded with pre_nms_top_n entries of -inf: k is then a constant
        # (torchvision's min(k, level size) would be a symbolic Min in every later shape), and the padding rows,
        # sorted after every real anchor, are marked invalid.
        picked, levels, start = [], [], 0
        k = self.pre_nms_top_n
        padded = torch.cat([objectness, objectness.new_full((k,), -math.inf)])
        for i, count in enumerate(counts):
            level = torch.cat([objectness[start:start + count], padded[-k:]])
            _, top = level.topk(k)
            picked.append(torch.where(top < count, top + start, objectness.shape[0] + top - count))
            levels.append(torch.full_like(top, i))
            start = start + count
        picked, levels = torch.cat(picked), torch.cat(levels)
        real = padded[picked] > -math.inf
        proposals = torch.cat([proposals, proposals.new_zeros(k, 4)])
        boxes = _clip(proposals[picked], height, width)
        scores = padded[picked].sigmoid()
        valid = real & _large_enough(boxes, self.rpn_min_size) & (scores >= self.rpn_score)
        scores = scores.masked_fill(~valid, -math.inf)
        valid = valid & _masked_nms(boxes, scores, levels, self.rpn_nms)
        scores = scores.masked_fill(~valid, -math.inf)
        best, order = scores.topk(min(self.post_nms_top_n, scores.shape[0]))  # a constant: L * pre_nms_top_n rows
        return boxes[order], best > -math.inf

    def forward(self, image: Tensor):
        """image [3, H, W] float RGB in [0, 1] -> boxes [K, 4], labels [K], scores [K](, masks [K, 1, H, W])."""
        height, width = image.shape[-2:]
        x = (image.flip(0) if self.bgr else image)
        x = self._resize((x - self.mean) / self.std)
        rh, rw = x.shape[-2:]
        d = self.size_divisible
        ph, pw = (rh + d - 1) // d * d, (rw + d - 1) // d * d
        batch = nn.functional.pad(x, (0, pw - rw, 0, ph - rh))[None]
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        proposals, valid = self._proposals(batch, list(features.values()), rh, rw)

        pooled = self._roi_align(features, proposals, self.box_pool)
        logits, regression = self.box_predictor(self.box_head(pooled))
        classes = logits.shape[-1]
        boxes = _clip(self.box_coder.decode_single(regression, proposals).reshape(-1, classes, 4), rh, rw)
        scores = nn.functional.softmax(logits, -1)
        labels = torch.arange(classes, device=x.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = (valid[:, None].expand(-1, classes - 1).reshape(-1) & (scores > self.score_thresh)
                & _large_enough(boxes, 1e-2))
        scores = scores.masked_fill(~keep, -math.inf)
        keep = keep & _masked_nms(boxes, scores, labels, self.nms_thresh)
        scores = scores.masked_fill(~keep, -math.inf)
        scores, order = scores.topk(min(self.detections_per_img, scores.shape[0]))  # constants
        # The one data-dependent size: kept detections are a prefix of the sorted scores.
        count = (scores > -math.inf).sum().item()
        torch._check(count >= 0)
        torch._check(count <= scores.shape[0])
        scores, boxes, labels = scores[:count], boxes[order[:count]], labels[order[:count]]
        # resize_boxes: float32 original / resized size per axis, as torchvision divides them
        size = torch.stack([image.new_ones(()) * width, image.new_ones(()) * height] * 2)
        resized = torch.stack([image.new_ones(()) * rw, image.new_ones(()) * rh] * 2)
        scale = size / resized
        out_boxes = boxes * scale
        if not self.has_mask:
            return out_boxes, labels, scores
        mask_logits = self.mask_predictor(self.mask_head(self._roi_align(features, boxes, self.mask_pool)))
        index = torch.arange(count, device=x.device)
        probs = mask_logits[index, labels].sigmoid()[:, None]
        return out_boxes, labels, scores, paste_masks(probs, out_boxes, height, width)
