"""Datasets: images decoded with OpenCV (BGR -> RGB, uint8 [H, W, 3]) from folders or uncompressed tar archives."""
from .errors import DataError
from .folders import IMG_EXTENSIONS, ImageFolderDataset, decode_image, find_split, read_image

__all__ = ["DataError", "IMG_EXTENSIONS", "ImageFolderDataset", "decode_image", "find_split", "read_image"]
