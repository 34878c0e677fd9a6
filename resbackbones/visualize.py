"""Drawings of detections for people: predictions coloured by class, and beside them the ground truth of a COCO json
under a legend (what tools/predict.py writes as PNGs).

    canvas = draw_detections(image, output, names, score_thresh=0.5)             # BGR uint8 (io.outputs.write_image)
    truth = GroundTruth("val.json").for_image(path, height, width)               # None: not in the json
    canvas = draw_with_ground_truth(image, output, names, truth, score_thresh=0.5)
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from .data.coco_format import check_ground_truth
from .data.errors import DataError

GT_COLOUR = (80, 220, 80)  # BGR green: ground truth, one colour for every class


def palette(index: int) -> Tuple[int, int, int]:
    """A colour (BGR) of its own for class `index`, the same in every image and run."""
    rng = np.random.default_rng(index * 7919 + 1)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


def _label(canvas, text, x1, y1, colour) -> None:
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(canvas, (x1, max(0, y1 - th - 4)), (x1 + tw + 2, max(th + 4, y1)), colour, -1)
    cv2.putText(canvas, text, (x1 + 1, max(th + 1, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)


def draw_boxes(image: np.ndarray, boxes, texts: Sequence[str], colours, masks=None) -> np.ndarray:
    """image uint8 [H, W, 3] RGB -> BGR uint8 with masks [K, H, W] bool blended, boxes [K, 4] xyxy and labels."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.float32)
    if masks is not None:
        for mask, colour in zip(masks, colours):
            canvas[mask] = 0.5 * canvas[mask] + 0.5 * np.array(colour, np.float32)
    canvas = canvas.astype(np.uint8)
    for box, text, colour in zip(boxes, texts, colours):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        _label(canvas, text, x1, y1, colour)
    return canvas


def draw_detections(image: np.ndarray, output: Dict[str, torch.Tensor], names: Dict[int, str], *,
                    score_thresh: float) -> np.ndarray:
    """One detector output drawn on its image (BGR): detections scoring >= score_thresh, coloured by class."""
    keep = output["scores"] >= score_thresh
    labels, scores = output["labels"][keep].tolist(), output["scores"][keep].tolist()
    masks = (output["masks"][keep][:, 0] > 0.5).numpy() if "masks" in output else None
    texts = [f"{names.get(int(label), int(label))} {score:.2f}" for label, score in zip(labels, scores)]
    return draw_boxes(image, output["boxes"][keep].tolist(), texts, [palette(int(lb)) for lb in labels], masks)


def with_legend(panels: Sequence[np.ndarray], captions: Sequence[Tuple[str, Tuple[int, int, int]]]) -> np.ndarray:
    """Panels side by side (BGR, same height) under a strip with one caption per panel in its colour."""
    strip = np.full((22, sum(p.shape[1] for p in panels) + 4 * (len(panels) - 1), 3), 255, np.uint8)
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    x = 0
    for panel, (text, colour) in zip(panels, captions):
        cv2.rectangle(strip, (x + 4, 5), (x + 16, 17), colour, -1)
        cv2.putText(strip, text, (x + 20, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += panel.shape[1] + 4
    return np.concatenate([strip, np.concatenate(row, axis=1)], axis=0)


class GroundTruth:
    """A COCO json's annotations by image file name (its basename), to draw beside the predictions.

    for_image(path, height, width) -> (boxes xyxy, texts, masks [K, H, W] bool or None) or None when the json has no
    image of that name, or one of another size (a resized copy: its boxes would not fit)."""

    def __init__(self, path):
        import json

        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except OSError as error:
            raise DataError(f"--gt {path}: cannot read it ({error.strerror or error})") from None
        except ValueError as error:
            raise DataError(f"--gt {path} is not valid JSON: {error}") from None
        check_ground_truth(data, source=f"--gt {path}", types_only=True, error=DataError)
        self.names = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
        self.images, self.anns = {}, {}
        for info in data.get("images", []):
            name = Path(str(info.get("file_name", ""))).name
            if name in self.images:
                raise DataError(f"--gt {path}: two images named {name}; predict matches images by file name")
            self.images[name] = info
        for ann in data.get("annotations", []):
            self.anns.setdefault(ann["image_id"], []).append(ann)

    def for_image(self, path, height: int, width: int):
        info = self.images.get(Path(path).name)
        if info is None or (int(info.get("height", height)), int(info.get("width", width))) != (height, width):
            return None
        boxes, texts, masks = [], [], []
        for ann in self.anns.get(info["id"], []):
            x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
            boxes.append((x, y, x + w, y + h))
            texts.append(self.names.get(int(ann["category_id"]), str(ann["category_id"])) +
                         (" (crowd)" if ann.get("iscrowd", 0) else ""))
            masks.append(_decode_segmentation(ann.get("segmentation"), height, width))
        has_masks = any(m is not None for m in masks)
        masks = [m if m is not None else np.zeros((height, width), bool) for m in masks] if has_masks else None
        return boxes, texts, masks


def _decode_segmentation(segm, height: int, width: int) -> Optional[np.ndarray]:
    """Polygons / RLE -> bool [H, W]; None when absent or undecodable (the box is still drawn)."""
    from pycocotools import mask as mask_utils

    if not segm:
        return None
    try:
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects([p for p in segm if len(p) >= 6], height, width))
        elif isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        return mask_utils.decode(rle).astype(bool)
    except Exception:  # noqa: BLE001 - a malformed segmentation must not stop the drawing; its box is drawn
        return None


def draw_with_ground_truth(image: np.ndarray, output, names: Dict[int, str], truth, *,
                           score_thresh: float) -> np.ndarray:
    """Predictions (left, coloured by class) beside the ground truth (right, green), under a legend strip."""
    predicted = draw_detections(image, output, names, score_thresh=score_thresh)
    count = int((output["scores"] >= score_thresh).sum())
    boxes, texts, masks = truth
    gt = draw_boxes(image, boxes, texts, [GT_COLOUR] * len(boxes), masks)
    return with_legend([predicted, gt], [(f"predictions >= {score_thresh:.2f}: {count}", (90, 90, 90)),
                                         (f"ground truth: {len(boxes)}", GT_COLOUR)])
