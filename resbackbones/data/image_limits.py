"""Refuse an image too large to decode before decoding it: its header is read, no pixel is.

A 1.2 MB PNG can declare 20000 x 20000 pixels; decoding it takes 1.2 GB, and the detector's float copies and
resizing took 21 GB before the process was killed. decode_image() calls check_pixel_limit first, so every reader
(training sets, tools/predict.py, tools/eval_coco.py) refuses such a file with one line naming it.
"""
import io
import os
import warnings

from .errors import DataError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: 300 MB as RGB uint8; RESBACKBONES_MAX_PIXELS changes it


def max_pixels() -> int:
    value = os.environ.get("RESBACKBONES_MAX_PIXELS", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise DataError(f"RESBACKBONES_MAX_PIXELS must be a whole number >= 1, got {value!r}")
    return int(value)


def check_pixel_limit(data: bytes, *, name: str) -> None:
    """DataError when the image header in `data` declares more than max_pixels() pixels. Formats Pillow cannot
    identify pass through (OpenCV then decides); so do truncated headers (decoding reports them)."""
    from PIL import Image

    limit = max_pixels()
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # Pillow's own cap would hide the size; ours is applied below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - not identifiable by Pillow: leave the verdict to OpenCV
        return
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if width * height > limit:
        raise DataError(f"image {name} is {width}x{height} ({width * height / 1e6:g} MP), above the limit of "
                        f"{limit / 1e6:g} MP: nothing was decoded; downscale it or raise RESBACKBONES_MAX_PIXELS")
