"""Embedded synthetic instance dataset: coloured shapes with instance masks, written as COCO json + PNG images.

The quickstart trains on it so that the whole COCO path (json -> dataset -> detector -> COCOeval) runs with
no download. Each image (``image_size`` x ``image_size`` px, >= 192) holds 1-4 instances of three classes
(circle, rectangle, triangle) with random colours, sizes, aspect ratios and rotations over a noisy textured
background. Shapes are drawn in order, so later shapes occlude earlier ones; every mask is the *visible*
part and every box is the box of the visible mask. Instances occluded to less than ``min_visible`` of their
own area are dropped (a human could not label them either).

Generation is deterministic in (seed, num_images, image_size); train and val use different seeds, so val
images are fresh. Masks are stored as compressed RLE (exact for the non-convex visible parts).

    root = write_shapes_coco("/tmp/shapes_train", num_images=600, seed=1)   # -> root/annotations.json, root/images/
"""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ..io.outputs import write_image, write_json_atomic

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"})
GENERATOR_VERSION = 1  # bump when the drawing changes so that cached folders are regenerated


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noisy background: a random colour gradient + low-frequency blobs + per-pixel Gaussian noise. [H, W, 3] uint8."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = c0[None, None] * (1 - ramp[..., None]) + c1[None, None] * ramp[..., None]
    low = cv2.resize(rng.normal(0, 25, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = img + low + rng.normal(0, rng.uniform(6, 18), (size, size, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _shape_mask(rng: np.random.Generator, size: int, category: int) -> np.ndarray:
    """Full (unoccluded) binary mask [H, W] uint8 of one random shape of `category`, kept inside the image."""
    mask = np.zeros((size, size), np.uint8)
    extent = rng.uniform(0.12, 0.42) * size  # object size relative to the image: small to large
    half = extent / 2
    cx, cy = rng.uniform(half + 2, size - half - 2, 2)
    if category == 1:  # circle
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(half)), 1, thickness=-1, lineType=cv2.LINE_8)
    elif category == 2:  # rectangle, random aspect and rotation
        aspect = rng.uniform(0.55, 1.0)
        w, h = (extent, extent * aspect) if rng.random() < 0.5 else (extent * aspect, extent)
        box = cv2.boxPoints(((cx, cy), (w, h), rng.uniform(0, 90)))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    else:  # triangle: three vertices around the centre, each with jittered angle and radius
        base = rng.uniform(0, 2 * np.pi)
        angles = base + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        radii = half * rng.uniform(0.8, 1.0, 3)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _distinct_colour(rng: np.random.Generator, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour at least ~80 (L1 over RGB) away from the background under the shape, so it stays visible."""
    under = background[mask.astype(bool)].mean(0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(50):
        if np.abs(colour - under).sum() >= 80:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def render_image(rng: np.random.Generator, size: int, *, min_visible: float = 0.35) -> Tuple[np.ndarray, List[Dict]]:
    """One image [H, W, 3] uint8 RGB and its instances [{"category_id", "mask" [H, W] uint8 (visible part),
    "full_area" (pixels of the whole drawn shape)}]."""
    img = _background(rng, size)
    num = int(rng.integers(1, 5))
    full_masks, cats = [], []
    for _ in range(num):
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        mask = _shape_mask(rng, size, cat)
        colour = _distinct_colour(rng, img, mask)
        shade = rng.normal(0, 6, (size, size, 1))  # slight texture so shapes are not flat fills
        img = np.where(mask[..., None].astype(bool), np.clip(colour + shade, 0, 255), img)
        full_masks.append(mask)
        cats.append(cat)
    instances = []
    for i, (mask, cat) in enumerate(zip(full_masks, cats)):
        visible = mask.copy()
        for later in full_masks[i + 1:]:
            visible[later.astype(bool)] = 0
        if visible.sum() < max(min_visible * mask.sum(), 16):
            continue
        instances.append({"category_id": cat, "mask": visible, "full_area": int(mask.sum())})
    return np.clip(img, 0, 255).astype(np.uint8), instances


def shapes_coco_dict(*, num_images: int, seed: int, image_size: int = 192) -> Tuple[Dict, List[np.ndarray]]:
    """Generate the COCO dict and the RGB images (in memory). Deterministic in its arguments."""
    from pycocotools import mask as mask_utils  # pycocotools: the RLE codec of the COCO format

    if image_size < 192:
        raise ValueError(f"shapes image_size must be >= 192 px (a fair task), got {image_size}")
    rng = np.random.default_rng(seed)
    images, annotations, pixels = [], [], []
    for image_id in range(1, num_images + 1):
        img, instances = render_image(rng, image_size)
        while not instances:  # cannot happen for the last-drawn shape, kept as a guard
            img, instances = render_image(rng, image_size)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": image_size, "height": image_size})
        pixels.append(img)
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst["mask"]))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": inst["category_id"],
                "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0, "segmentation": rle,
            })
    info = {"description": "resbackbones embedded shapes", "seed": seed, "num_images": num_images,
            "image_size": image_size, "generator_version": GENERATOR_VERSION}
    return {"info": info, "images": images, "annotations": annotations, "categories": list(CATEGORIES)}, pixels


def write_shapes_coco(root, *, num_images: int, seed: int, image_size: int = 192) -> Path:
    """Write (or reuse, when already generated with the same arguments) root/annotations.json + root/images/*.png.

    Returns `root`. The json is written last and atomically, so a half-written folder is regenerated.
    """
    root = Path(root)
    ann_file = root / "annotations.json"
    if ann_file.exists():
        try:
            info = json.loads(ann_file.read_text()).get("info", {})
        except json.JSONDecodeError:
            info = {}
        wanted = {"seed": seed, "num_images": num_images, "image_size": image_size,
                  "generator_version": GENERATOR_VERSION}
        if all(info.get(k) == v for k, v in wanted.items()):
            return root
    coco, pixels = shapes_coco_dict(num_images=num_images, seed=seed, image_size=image_size)
    for meta, img in zip(coco["images"], pixels):  # the one output rule: each write checked, none half-written
        write_image(root / "images" / meta["file_name"], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    write_json_atomic(ann_file, coco, indent=None)
    return root
