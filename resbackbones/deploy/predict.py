"""What tools/predict.py does with a loaded detector: the images of files and folders, batched inference that gives
one-by-one results (the test loader of evaluation, data/loaders.py), images the model cannot resize refused up front
(drawing them: resbackbones/visualize.py).

    for path, image, output in predict_images(model, list_images(["img.jpg", "folder/"]), batch_size=4, device=dev):
        canvas = draw_detections(image, output, names, score_thresh=0.5)
"""
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data.errors import DataError
from ..data.folders import IMG_EXTENSIONS
from ..data.loaders import ImageRecords, build_det_test_loader, padded_shape
from ..data.resizable import MIN_RESIZED_SIDE, check_resizable  # noqa: F401 - public here too
from ..utils.amp import autocast


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
    """(height, width) from the image header without decoding, as read_image will return it (an EXIF orientation
    that turns the image by 90 degrees swaps the two); None when Pillow cannot identify the file."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # only the size is read; the pixel limit is applied when decoding
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # OpenCV applies the orientation
        return (int(width), int(height)) if turned else (int(height), int(width))
    except Exception:  # noqa: BLE001 - not identifiable by Pillow: decoding will decide
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_headers_resizable(paths: Sequence[Path], *, min_size: int, max_size: int) -> None:
    """DataError naming the first image of `paths` the model cannot resize (check_resizable), from the file headers:
    before any image is decoded."""
    for path in paths:
        size = header_size(path)
        if size is not None:
            check_resizable(path, *size, min_size=min_size, max_size=max_size)


Detection = Tuple[Path, np.ndarray, Dict[str, torch.Tensor]]


def predict_images(model: nn.Module, paths: Sequence[Path], *, batch_size: int, device: torch.device,
                   amp: str = "none", num_workers: int = 0) -> Iterator[Detection]:
    """(path, RGB uint8 image [H, W, 3], detections on CPU) for every path, in batches of up to `batch_size`, the
    images decoded in `num_workers` processes (data/loaders.build_det_test_loader, the loader of evaluation).

    Only images that take the same padded shape share a batch: each then sees exactly the input it sees alone
    (torchvision pads a batch to its largest image, which moves a smaller image's RPN proposals), so the results
    equal one-by-one inference (up to the float rounding of batched kernels). Shapes come from the file headers;
    images wait in a bucket per shape, a full bucket runs, the rest run at the end, so the order is by bucket.
    Raises DataError for an image that does not decode or that the model cannot resize (check_resizable).
    """
    transform = model.transform
    records = []
    for path in paths:
        size = header_size(path)
        records.append({"path": path, **({"height": size[0], "width": size[1]} if size else {})})
    # header sizes only group the batches; the decoded sizes decide (_same_shape_runs)
    images = ImageRecords(records, keep_pixels=True, check_sizes=False)
    loader = build_det_test_loader(images, batch_size=batch_size, num_workers=num_workers, rank=0, world=1,
                                   transform=transform)
    for batch in loader:
        for _, target in batch:
            check_resizable(target["path"], *target["pixels"].shape[:2], min_size=transform.min_size[-1],
                            max_size=transform.max_size)
        for items in _same_shape_runs(transform, batch):
            tensors = [tensor.to(device) for tensor, _ in items]
            with torch.no_grad(), autocast(device, amp):  # boxes / scores / masks come out float32 either way
                outputs = model(tensors)
            for (_, target), output in zip(items, outputs):
                yield target["path"], target["pixels"], {k: v.cpu() for k, v in output.items()}


def _same_shape_runs(transform: nn.Module, batch: List) -> List[List]:
    """`batch` split by the padded shape of the decoded images: a header that disagrees with its pixels (an EXIF
    orientation OpenCV ignores for that format) must not put two shapes in one forward pass."""
    groups: "OrderedDict[Tuple[int, int], List]" = OrderedDict()
    for item in batch:
        groups.setdefault(padded_shape(transform, *item[0].shape[-2:]), []).append(item)
    return list(groups.values())
