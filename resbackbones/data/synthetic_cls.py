"""An embedded classification dataset generated from a seed (no download): 10 classes of drawn shapes/textures.

Each image: a noisy background (random colour, gradient, Gaussian noise, a few distractor strokes), one object of
the class in a random colour, size, position and (small) rotation, contrast not guaranteed. Classes differ by
shape/texture only, never by colour, so a model has to learn shapes. A ResNet-20 gets far above chance in a few
CPU minutes but not 100 %.

write_image_folder(root) writes root/train/<class>/*.png and root/val/<class>/*.png, so training reads it through
the same ImageFolder code as real data.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

from ..io.outputs import write_image, write_json_atomic

CLASSES = ("disk", "ring", "square", "square_outline", "triangle", "plus", "x_cross", "stripes_h", "stripes_v",
           "checker")
_VERSION = 1  # bump when drawing changes so cached folders are regenerated


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _distinct_colour(rng: np.random.Generator, background: np.ndarray, min_distance: float) -> np.ndarray:
    for _ in range(20):
        colour = _colour(rng)
        if np.abs(colour - background).sum() >= min_distance:
            return colour
    return 255.0 - background


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size] in {0, 1} with the class's shape centred and filling most of the square."""
    s = size
    m = np.zeros((s, s), np.uint8)
    c = (s - 1) / 2.0
    r = s / 2.0 - 1
    thick = max(1, int(round(s * rng.uniform(0.12, 0.2))))
    if kind == "disk":
        cv2.circle(m, (int(c), int(c)), int(r), 1, -1, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(m, (int(c), int(c)), int(r - thick / 2), 1, thick, cv2.LINE_AA)
    elif kind == "square":
        m[1:-1, 1:-1] = 1
    elif kind == "square_outline":
        m[1:-1, 1:-1] = 1
        m[1 + thick:-1 - thick, 1 + thick:-1 - thick] = 0
    elif kind == "triangle":
        pts = np.array([[c, 1], [1, s - 2], [s - 2, s - 2]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "plus":
        lo, hi = int(c - thick / 2), int(c + thick / 2) + 1
        m[lo:hi, 1:-1] = 1
        m[1:-1, lo:hi] = 1
    elif kind == "x_cross":
        cv2.line(m, (1, 1), (s - 2, s - 2), 1, thick)
        cv2.line(m, (1, s - 2), (s - 2, 1), 1, thick)
    elif kind in ("stripes_h", "stripes_v"):
        period = max(3, int(round(s * rng.uniform(0.2, 0.3))))
        stripes = (np.arange(s) // max(1, period // 2)) % 2 == 0
        m[:, :] = stripes[:, None] if kind == "stripes_h" else stripes[None, :]
    elif kind == "checker":
        period = max(2, int(round(s * rng.uniform(0.12, 0.18))))
        idx = np.arange(s) // period
        m[:, :] = ((idx[:, None] + idx[None, :]) % 2 == 0)
    else:
        raise ValueError(f"unknown synthetic class {kind!r}")
    return m.astype(np.float32)


def draw_sample(label: int, *, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 [image_size, image_size, 3] image of class `label`."""
    s = image_size
    background = _colour(rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    gradient = (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)[..., None] * rng.uniform(0, 60)
    image = background[None, None, :] + gradient
    # Distractor strokes in random colours: clutter that is not the class shape.
    canvas = np.zeros((s, s, 3), np.float32)
    for _ in range(int(rng.integers(0, 3))):
        p1 = tuple(int(v) for v in rng.integers(0, s, 2))
        p2 = tuple(int(v) for v in rng.integers(0, s, 2))
        cv2.line(canvas, p1, p2, tuple(float(v) for v in _colour(rng) - background), 1, cv2.LINE_AA)
    image = image + canvas
    size = int(rng.integers(int(s * 0.35), int(s * 0.8) + 1))
    mask = _mask(CLASSES[label], size, rng)
    angle = rng.uniform(-20, 20)
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    mask = cv2.warpAffine(mask, rot, (size, size), flags=cv2.INTER_LINEAR)
    y0, x0 = (int(v) for v in rng.integers(0, s - size + 1, 2))
    colour = _distinct_colour(rng, background, min_distance=rng.uniform(60, 200))
    region = image[y0:y0 + size, x0:x0 + size]
    alpha = mask[..., None]
    image[y0:y0 + size, x0:x0 + size] = region * (1 - alpha) + colour[None, None, :] * alpha
    image = image + rng.normal(0, rng.uniform(5, 25), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(num_per_class: int, *, image_size: int = 32, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, 3], labels int64 [N]) with classes interleaved; the same seed gives the same data."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASSES)), num_per_class)
    images = np.stack([draw_sample(int(label), image_size=image_size, rng=rng) for label in labels])
    return images, labels.astype(np.int64)


def write_image_folder(root: os.PathLike, *, train_per_class: int = 500, val_per_class: int = 100,
                       image_size: int = 32, seed: int = 0) -> Path:
    """Write root/{train,val}/<class>/<NNNNN>.png (lossless) once; an existing complete folder is reused.

    Train and val come from different seeds, so val images are fresh draws. The folder is built under a temp
    name and renamed, so an interrupted generation never leaves a half-written dataset behind.
    """
    root = Path(root)
    spec = {"version": _VERSION, "train_per_class": train_per_class, "val_per_class": val_per_class,
            "image_size": image_size, "seed": seed, "classes": list(CLASSES)}
    marker = root / "dataset.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec:
                return root
        except (OSError, json.JSONDecodeError):
            pass
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, count, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1_000_003)):
        images, labels = generate(count, image_size=image_size, seed=split_seed)
        for name in CLASSES:
            (tmp / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            path = tmp / split / CLASSES[label] / f"{index:05d}.png"
            write_image(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # checked: a full disk is one line
    write_json_atomic(tmp / "dataset.json", spec, indent=None)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root


def default_cache_dir(**spec) -> Path:
    """$RESBACKBONES_CACHE (default ~/.cache/resbackbones)/synthetic_cls-<hash of the spec>."""
    base = Path(os.environ.get("RESBACKBONES_CACHE", Path.home() / ".cache" / "resbackbones"))
    digest = hashlib.sha1(json.dumps(dict(spec, version=_VERSION), sort_keys=True).encode()).hexdigest()[:10]
    return base / f"synthetic_cls-{digest}"


def class_names() -> List[str]:
    return list(CLASSES)
