"""Classification transforms on OpenCV/albumentations: RGB uint8 [H, W, 3] -> float32 tensor [3, H, W].

Recipes (He et al. 2015):
  imagenet  train: RandomResizedCrop(crop, scale) + horizontal flip ("scale augmentation", Szegedy et al.);
            eval: resize shorter side to `resize` (256) + center crop (224); optional ten-crop (4 corners + center,
            and their flips) -> [10, 3, crop, crop].
  cifar     train: 4-px zero pad + random 32x32 crop + flip; eval: the image as is.
  none      no augmentation, only normalisation (synthetic data, debugging).
Every pipeline is reseeded per sample by SeededTransform so augmentation is reproducible whatever the number of
DataLoader workers, and identical after a resume.
"""
from typing import Callable, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch

from .seeding import reseed_compose, sample_seed

# The recipes' normalisation, declared with the schema whose defaults they are (config sits below data).
from ..config.cls import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)
RECIPES = ("imagenet", "cifar", "none")


def _to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [H, W, 3] -> normalised float32 [3, H, W] (one fused numpy pass, then a zero-copy permute)."""
    scale = np.asarray(std, np.float32) * 255.0
    array = (image.astype(np.float32) - np.asarray(mean, np.float32) * 255.0) / scale
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class SeededTransform:
    """An albumentations Compose + normalisation; `reseed(seed)` makes the next call's randomness a function of seed.

    Each transform gets its own stream (seed, position), so e.g. the crop offset and the flip are independent.
    __call__(image RGB uint8 [H, W, 3]) -> float32 [3, H, W] (or [10, 3, h, w] for ten-crop).
    """

    def __init__(self, compose: A.Compose, *, mean: Sequence[float], std: Sequence[float],
                 ten_crop: Optional[int] = None):
        self.compose = compose
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ten_crop = ten_crop

    def reseed(self, seed: int) -> None:
        reseed_compose(self.compose, seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        image = self.compose(image=image)["image"]
        if self.ten_crop:
            return torch.stack([_to_tensor(c, self.mean, self.std) for c in ten_crops(image, self.ten_crop)])
        return _to_tensor(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"SeededTransform({self.compose}, mean={self.mean}, std={self.std}, ten_crop={self.ten_crop})"


def ten_crops(image: np.ndarray, size: int) -> Sequence[np.ndarray]:
    """4 corner + center crops of `size` and their horizontal flips (Krizhevsky et al. 2012 10-view testing)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"ten-crop size {size} exceeds image {h}x{w}")
    y1, x1 = (h - size) // 2, (w - size) // 2
    boxes = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (y1, x1)]
    crops = [image[y:y + size, x:x + size] for y, x in boxes]
    return crops + [np.ascontiguousarray(c[:, ::-1]) for c in crops]


def build_cls_transform(
    recipe: str, *, train: bool, crop_size: int, resize_size: Optional[int] = None,
    scale: Tuple[float, float] = (0.08, 1.0), pad: int = 4, flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, ten_crop: bool = False,
) -> SeededTransform:
    """The train or eval pipeline of `recipe` ("imagenet", "cifar" or "none"); see the module docstring."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown transform recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    steps: list = []
    if recipe == "imagenet":
        if train:
            steps.append(A.RandomResizedCrop(size=(crop_size, crop_size), scale=tuple(scale),
                                             interpolation=cv2.INTER_LINEAR))
        else:
            resize = resize_size or int(round(crop_size * 256 / 224))
            steps.append(A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_LINEAR))
            if not ten_crop:
                steps.append(A.CenterCrop(height=crop_size, width=crop_size))
    elif recipe == "cifar" and train:
        steps.append(A.PadIfNeeded(min_height=crop_size + 2 * pad, min_width=crop_size + 2 * pad,
                                   border_mode=cv2.BORDER_CONSTANT, fill=0))
        steps.append(A.RandomCrop(height=crop_size, width=crop_size))
    if train and flip_prob:
        steps.append(A.HorizontalFlip(p=flip_prob))
    compose = A.Compose(steps, seed=0)
    return SeededTransform(compose, mean=mean, std=std, ten_crop=crop_size if (ten_crop and not train) else None)


class TransformedDataset(torch.utils.data.Dataset):
    """dataset[i] = (transform(image), label) with the transform reseeded from (seed, epoch, i).

    `base` returns (RGB uint8 image, label) (e.g. ImageFolderDataset with transform=None). set_epoch(e) changes
    the augmentation of every sample between epochs; DataLoader workers get the epoch with the dataset copy.
    """

    def __init__(self, base, transform: Callable, *, seed: int = 0, indices: Optional[Sequence[int]] = None):
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.indices = list(indices) if indices is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, index: int):
        source = self.indices[index] if self.indices is not None else index
        image, label = self.base[source]
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(sample_seed(self.seed, self.epoch, source))
        return self.transform(image), label
