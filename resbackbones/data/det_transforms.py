"""Box- and mask-aware augmentation for detection (albumentations) and the conversion to torchvision targets.

Who resizes: the detector does. torchvision's GeneralizedRCNNTransform (model.input.min_size / max_size) resizes
each image, its boxes and masks, draws a training scale per image from min_size (multi-scale 640-800 in the COCO
configs) and maps predictions back to the ORIGINAL image size (boxes and pasted masks), so COCO results need no
bookkeeping. The dataset therefore does augmentation only (flip) by default. `resize=` is available for callers
that want dataset-side resizing (e.g. to shrink huge images before batching); the model then sees pre-resized
images, and its min_size should equal the chosen size so that it does not resize a second time.

    tf = build_det_transforms(train=True, flip_prob=0.5)
    image, target = tf(image_uint8_hwc_rgb, {"boxes": np [K, 4] xyxy, "labels": np [K], "masks": np [K, H, W], ...})
    # image: float32 [3, H, W] in [0, 1]; target: boxes float32 [K, 4], labels int64 [K], masks uint8 [K, H, W]
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
import torch

from .images import image_to_tensor
from .seeding import reseed_compose


class ResizeShortestEdge(A.SmallestMaxSize):
    """Scale so the shortest side is `sizes` (one drawn at random per image when several) while the longest side
    stays <= max_size (detectron2's ResizeShortestEdge / torchvision's GeneralizedRCNNTransform rule:
    scale = min(size / short, max_size / long)). Masks use nearest-neighbour interpolation."""

    def __init__(self, sizes: Union[int, Sequence[int]], max_size: int, p: float = 1.0):
        sizes = [int(sizes)] if isinstance(sizes, (int, np.integer)) else [int(s) for s in sizes]
        if not sizes or min(sizes) < 1 or max_size < 1:
            raise ValueError(f"ResizeShortestEdge: sizes {sizes} and max_size {max_size} must be positive")
        super().__init__(max_size=sizes, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=p)
        self.longest = int(max_size)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params["shape"][:2]
        size = self.py_random.choice(self.max_size)
        return {"scale": min(size / min(height, width), self.longest / max(height, width))}


class DetectionAugmentation:
    """Callable (image uint8 [H, W, 3], target of numpy arrays) -> (image float [3, H, W] in [0, 1], target tensors).

    Boxes are xyxy pixels (albumentations "pascal_voc"); masks travel as a list with the image, and every instance
    keeps its box, label and mask together (an instance whose box leaves the image is dropped from all three).
    Dataset side only; the model-side resize/normalise is `detection.transform.DetectionTransform`.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform]):
        self.identity = len(transforms) == 0
        self.pipeline = None if self.identity else A.Compose(
            list(transforms),
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "instance"], clip=True,
                                     min_width=1.0, min_height=1.0),
        )

    def reseed(self, seed: int) -> None:
        """Make the next call's randomness a function of `seed` (engine.data_loading.SampleSeeded calls this with
        data.seeding.sample_seed before each training sample)."""
        if self.pipeline is not None:
            reseed_compose(self.pipeline, seed)

    def __call__(self, image: np.ndarray, target: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64).reshape(-1)
        masks = target.get("masks")
        if not self.identity:
            data = {"image": image, "bboxes": boxes, "labels": labels, "instance": np.arange(len(boxes))}
            if masks is not None and len(masks):
                data["masks"] = list(masks)
            out = self.pipeline(**data)
            image = out["image"]
            keep = np.asarray(out["instance"], np.int64).reshape(-1)
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = labels[keep]
            if masks is not None:
                if len(masks):
                    masks = np.stack([out["masks"][i] for i in keep]) if len(keep) else \
                        np.zeros((0, *image.shape[:2]), np.uint8)
                else:
                    masks = np.zeros((0, *image.shape[:2]), np.uint8)
        result = dict(target)
        result["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes))
        result["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
        if masks is not None:
            result["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
        return image_to_tensor(image), result


def build_det_transforms(*, train: bool, flip_prob: float = 0.5,
                         resize: Optional[Tuple[Sequence[int], int]] = None) -> DetectionAugmentation:
    """Training: optional ResizeShortestEdge(resize[0] sizes, resize[1] max) + horizontal flip; eval: resize only
    (the largest of the sizes), no flip. See the module docstring for why resizing is usually left to the model."""
    steps = []
    if resize is not None:
        sizes, max_size = resize
        sizes = [sizes] if isinstance(sizes, int) else list(sizes)
        steps.append(ResizeShortestEdge(sizes if train else [max(sizes)], max_size))
    if train and flip_prob > 0:
        steps.append(A.HorizontalFlip(p=flip_prob))
    return DetectionAugmentation(steps)


def collate_detection(batch):
    """List of (image [3, H, W], target) -> (list of images, list of targets): detectors take variable sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)
