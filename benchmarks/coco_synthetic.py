"""A large synthetic COCO ground truth + results set for timing COCO evaluation (no image pixels needed)."""
import random
from typing import Any, Dict, List, Tuple


def synthetic_coco(num_images: int = 1000, dets_per_image: int = 35, gt_per_image: int = 7, num_categories: int = 80,
                   seed: int = 0) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(ground truth dict, bbox results list): jittered true boxes, misses, false positives, random scores,
    a few crowd regions, objects of all three COCO area ranges."""
    rng = random.Random(seed)
    categories = [{"id": i + 1 + (i // 10), "name": f"class{i}"} for i in range(num_categories)]  # ids with gaps
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = 640, 480
        first = len(results)
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        for _ in range(gt_per_image):
            w, h = rng.choice([rng.uniform(8, 30), rng.uniform(32, 95), rng.uniform(100, 300)]), 0
            h = w * rng.uniform(0.5, 2.0)
            x, y = rng.uniform(0, width - w), rng.uniform(0, max(1, height - h))
            cat = rng.choice(categories)["id"]
            crowd = int(rng.random() < 0.02)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            for _ in range(rng.choice([0, 1, 1, 2])):  # misses and duplicates
                j = [rng.gauss(0, 0.1) for _ in range(4)]
                results.append({"image_id": image_id, "category_id": cat if rng.random() < 0.9 else
                                rng.choice(categories)["id"], "score": rng.random(),
                                "bbox": [x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])]})
        while len(results) - first < dets_per_image:
            w, h = rng.uniform(5, 200), rng.uniform(5, 200)
            results.append({"image_id": image_id, "category_id": rng.choice(categories)["id"],
                            "score": rng.random() * 0.6,
                            "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results
