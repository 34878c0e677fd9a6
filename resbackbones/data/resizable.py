"""Images the detector cannot resize: the transform scales the short side to min_size with the long side capped at
max_size, so a strip like 10000x50 shrinks to under a pixel across and fails inside interpolate. Refused up front
(predict, evaluation, training), naming the file, its size and the largest aspect ratio that fits."""
from typing import Iterable, Mapping, Sequence, Union

from .errors import DataError

MIN_RESIZED_SIDE = 8  # pixels: a thinner resized image holds no detectable object (and below 1 px resizing fails)


def check_resizable(name, height: int, width: int, *, min_size: int, max_size: int) -> None:
    """DataError when the detector's resize (short side to min_size, long side at most max_size) would leave the
    image's short side below MIN_RESIZED_SIDE pixels, e.g. a 10000x50 strip; names the file, its size and the fix."""
    short, long = min(height, width), max(height, width)
    scale = min(min_size / max(short, 1), max_size / max(long, 1))
    if short * scale < MIN_RESIZED_SIDE:
        raise DataError(
            f"image {name} is {width}x{height}: the model resizes it to {width * scale:.1f}x{height * scale:.1f} px "
            f"(input.min_size {min_size}, max_size {max_size}), under {MIN_RESIZED_SIDE} px across; crop or split it "
            f"into pieces of aspect ratio at most {max_size // MIN_RESIZED_SIDE}:1")


def check_coco_images_resizable(images: Iterable[Mapping], *, source, min_size: Union[int, Sequence[int]],
                                max_size: int) -> None:
    """check_resizable for every image record of a COCO json (its width/height; records without them are checked
    when decoded). min_size: one size or the training sizes (the smallest is the worst case)."""
    smallest = min(min_size) if isinstance(min_size, (list, tuple)) else int(min_size)
    for record in images:
        height, width = record.get("height"), record.get("width")
        if isinstance(height, int) and isinstance(width, int):
            check_resizable(f"{record.get('file_name', record.get('id'))} (id {record.get('id')} in {source})",
                            height, width, min_size=smallest, max_size=max_size)
