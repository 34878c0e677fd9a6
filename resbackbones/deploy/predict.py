"""What tools/predict.py does with a loaded detector: the images of files and folders, batched inference that gives
one-by-one results, images the model cannot resize refused up front (drawing them: resbackbones/visualize.py).

    for path, image, output in predict_images(model, list_images(["img.jpg", "folder/"]), batch_size=4, device=dev):
        canvas = draw_detections(image, output, names, score_thresh=0.5)
"""
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data.errors import DataError
from ..data.folders import IMG_EXTENSIONS, read_image
from ..data.images import image_to_tensor
from ..data.resizable import MIN_RESIZED_SIDE, check_resizable  # noqa: F401 - public here too
from ..engine.device import autocast


def list_images(inputs: Sequence[str]) -> List[Path]:
    """Image files of `inputs` in order: a file as given, a folder's images (by extension) sorted by name.
    Raises DataError for an input that does not exist and when no image is found."""
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return files


def header_size(path) -> Optional[Tuple[int, int]]:
    """(height, width) from the image header without decoding; None when Pillow cannot identify the file."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # only the size is read; the pixel limit is applied when decoding
        with Image.open(path) as image:
            width, height = image.size
        return int(height), int(width)
    except Exception:  # noqa: BLE001 - not identifiable by Pillow: decoding will decide
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def padded_shape(transform: nn.Module, height: int, width: int) -> Tuple[int, int]:
    """The shape an image of height x width takes in the detector's batch: resized by the transform itself (on a
    "meta" tensor: shapes only, no pixels), then padded to its size_divisible."""
    resized, _ = transform.resize(torch.empty(3, height, width, device="meta"))
    step = transform.size_divisible
    return tuple(int(math.ceil(s / step) * step) for s in resized.shape[-2:])


def predict_images(model: nn.Module, paths: Sequence[Path], *, batch_size: int, device: torch.device,
                   amp: str = "none") -> Iterator[Tuple[Path, np.ndarray, Dict[str, torch.Tensor]]]:
    """(path, RGB uint8 image, detections on CPU) for every path, in batches of up to `batch_size`.

    Only images that take the same padded shape share a batch: each then sees exactly the input it sees alone
    (torchvision pads a batch to its largest image, which moves a smaller image's RPN proposals), so the results
    equal one-by-one inference. Images wait in a bucket per shape; a full bucket runs, the rest run at the end.
    """
    transform = model.transform
    buckets: "OrderedDict[Tuple[int, int], List]" = OrderedDict()

    def run(items):
        tensors = [image_to_tensor(img).to(device) for _, img in items]
        with torch.no_grad(), autocast(device, amp):  # boxes / scores / masks come out float32 either way
            outputs = model(tensors)
        for (path, image), output in zip(items, outputs):
            yield path, image, {k: v.cpu() for k, v in output.items()}

    for path in paths:
        image = read_image(path)
        check_resizable(path, *image.shape[:2], min_size=transform.min_size[-1], max_size=transform.max_size)
        key = padded_shape(transform, *image.shape[:2])
        bucket = buckets.setdefault(key, [])
        bucket.append((path, image))
        if len(bucket) >= batch_size:
            yield from run(buckets.pop(key))
    for bucket in buckets.values():
        yield from run(bucket)
