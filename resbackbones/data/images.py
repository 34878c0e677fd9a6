"""The one image-decode path and the one conversion to the tensor a detector takes (datasets, evaluation,
prediction, export):

    image = read_image(path)          # RGB uint8 [H, W, 3]; DataError naming the file otherwise
    image = decode_image(data, name=) # the same from bytes (tar members)
    tensor = image_to_tensor(image)   # float32 [3, H, W] in [0, 1]

Every image the library reads goes through read_image / decode_image (data/folders.py re-exports both, their
former home): a missing, unreadable, truncated, undecodable or oversized file, or one whose name is not valid
UTF-8, is one DataError naming the file, and what the C decoders print meanwhile is caught and said in that
message (or as a warning naming the file when the image decodes anyway) instead of as stray stderr lines
(issue 21).
"""
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Tuple, Union

import cv2
import numpy as np
import torch

from .errors import DataError, show_path
from .image_limits import check_pixel_limit

PathLike = Union[str, os.PathLike]
# IMREAD_COLOR converts gray/palette to 3 channels, drops alpha and applies EXIF orientation; ANYDEPTH keeps
# 16-bit/float samples so we can scale them to 8 bits ourselves instead of letting OpenCV truncate them.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


def decode_image(data: bytes, *, name: str) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3]. Raises DataError naming `name` if they do not decode."""
    if _truncated_jpeg(data):
        raise DataError(f"cannot decode image {name}: truncated JPEG (no end-of-image marker after its last scan, "
                        f"{len(data)} bytes)")
    with warnings.catch_warnings():  # Pillow warns about a corrupt EXIF block while reading the header
        warnings.simplefilter("ignore")
        check_pixel_limit(data, name=name)  # header only: a 1 MB file can declare gigabytes of pixels
    buffer = np.frombuffer(data, dtype=np.uint8)
    image, said = None, ""
    if buffer.size:
        try:
            image, said = _decoder_output(lambda: cv2.imdecode(buffer, _IMREAD_FLAGS))
        except cv2.error:
            image = None
    if image is None:
        why = f"; the decoder said: {said}" if said else ""
        raise DataError(f"cannot decode image {name}: corrupt, truncated or not an image ({len(data)} bytes{why})")
    if said:
        warnings.warn(f"image {name} decoded, but the decoder reported: {said}", RuntimeWarning, stacklevel=2)
    if image.ndim == 2:  # some decoders ignore IMREAD_COLOR for exotic depths
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    image = _to_uint8(image, name=name)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_LOG_PREFIX = re.compile(r"^\s*\[\s*[A-Z]+:[^\]]*\]\s*(global\s+\S+\s+)?")
_SINK_LOCK = threading.Lock()
_SINK = {"pid": -1, "fd": -1}


def _decoder_output(decode: Callable[[], object]) -> Tuple[object, str]:
    """(decode(), the first line the C decoders printed meanwhile). libjpeg ("Corrupt JPEG data: ..."), libtiff
    and OpenCV's log write straight to file descriptor 2, which would put lines without a file name beside the
    one "error: ..." line of a tool; here they are caught in a temporary file and returned, to be said with the
    file's name (issue 21). Without a usable descriptor 2, decode() runs as it is."""
    with _SINK_LOCK:
        try:
            if _SINK["pid"] != os.getpid():  # a forked worker gets its own file (the parent's offset is shared)
                with tempfile.TemporaryFile() as handle:  # the dup outlives the (already unlinked) file object
                    _SINK["fd"], _SINK["pid"] = os.dup(handle.fileno()), os.getpid()
            sink = _SINK["fd"]
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
            saved = os.dup(2)
        except OSError:
            return decode(), ""
        try:
            os.dup2(sink, 2)
            result = decode()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        os.lseek(sink, 0, os.SEEK_SET)
        text = os.read(sink, 4096).decode("utf-8", "replace")
    # OpenCV's log lines start "[ERROR:0@0.12] global grfmt_png.cpp:296 "; the ERROR line says the most.
    lines = [(line.lstrip().startswith("[ERROR"), _LOG_PREFIX.sub("", line).strip()) for line in text.splitlines()]
    lines = [said for _, said in sorted((not is_error, said) for is_error, said in lines if said)]
    return result, (lines[0][:160] if lines else "")


def _truncated_jpeg(data: bytes) -> bool:
    # OpenCV 4.x decodes a cut-off JPEG into a half-grey image with only a console warning; OpenCV 5 refuses it.
    # Entropy-coded data never contains FF D9 / FF DA (0xFF is byte-stuffed), so a complete JPEG has its
    # end-of-image marker after the start of its last scan; bytes appended after EOI do not matter.
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _to_uint8(image: np.ndarray, *, name: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # Round(x * 255 / 65535): maps 0 -> 0 and 65535 -> 255 exactly (a >> 8 would bias every value down).
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):
        # Float images (TIFF/EXR) are taken to be in [0, 1].
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    raise DataError(f"image {name} has unsupported sample type {image.dtype}; expected 8/16-bit or float")


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file -> RGB uint8 [H, W, 3]. Raises DataError naming the file.

    The one image reader of the library (datasets, evaluation, predict, export_detector): the bytes are read by
    Python (so any path the OS accepts works, including names that are not valid UTF-8, which OpenCV's own
    imread cannot open) and decoded by decode_image. Every failure (missing, unreadable, a folder, not an image,
    truncated, too large) is one DataError naming the file, shown with show_path (issue 21).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read image file {show_path(path)}: {error.strerror or error}") from None
    return decode_image(data, name=show_path(path))



def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1], contiguous (a new tensor; `image` is not shared).

    Scaling to [0, 1] only: the detector normalises (model.input.image_mean / image_std), so every caller hands it
    the same pixels whether it trains, evaluates or predicts.
    """
    # Contiguous CHW (not a permuted view): a permuted (channels-last) stride can select other resize kernels in the model.
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
