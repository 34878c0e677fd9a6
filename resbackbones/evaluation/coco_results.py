"""Detector outputs -> COCO results (xywh boxes, original category ids, RLE masks), ready for evaluate_coco."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def _rle_encode(masks: np.ndarray) -> List[Dict[str, Any]]:
    from pycocotools import mask as mask_util

    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))  # [H, W, K] uint8, Fortran order
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
    return rles


def to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category: Mapping[int, int],
    *,
    mask_threshold: float = 0.5,
    rescale: Optional[Sequence[Tuple[Tuple[int, int], Tuple[int, int]]]] = None,
) -> List[Dict[str, Any]]:
    """One detector output per image -> a flat list of COCO result dicts.

    outputs[i]: {"boxes": [K, 4] xyxy pixels, "scores": [K], "labels": [K] contiguous 1..C,
                 optional "masks": [K, 1, H, W] probabilities (or [K, H, W])}.
    label_to_category: contiguous label -> the dataset's category id (e.g. COCO 1 -> 1, 80 -> 90).
    rescale[i]: ((h_out, w_out), (h_orig, w_orig)) when the outputs are in a resized frame: boxes are scaled and
    masks resized (bilinear, before thresholding) to the original image size.
    Result: [{"image_id", "category_id", "bbox": [x, y, w, h], "score", ("segmentation": RLE with str counts)}].
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"to_coco_results: {len(outputs)} outputs for {len(image_ids)} image ids")
    results: List[Dict[str, Any]] = []
    for index, (output, image_id) in enumerate(zip(outputs, image_ids)):
        boxes = output["boxes"].detach().float().cpu()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        masks = output.get("masks")
        if rescale is not None:
            (h_out, w_out), (h_orig, w_orig) = rescale[index]
            boxes = boxes * torch.tensor([w_orig / w_out, h_orig / h_out] * 2)
            if masks is not None and masks.shape[-2:] != (h_orig, w_orig):
                m = masks.detach().float().reshape(-1, 1, *masks.shape[-2:])
                masks = F.interpolate(m, size=(h_orig, w_orig), mode="bilinear", align_corners=False)
        unknown = sorted({label for label in labels if label not in label_to_category})
        if unknown:
            raise ValueError(f"to_coco_results: labels {unknown} have no category id; mapping covers "
                             f"{sorted(label_to_category)[:10]}")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        rles: List[Dict[str, Any]] = []
        if masks is not None:
            binary = (masks.detach().reshape(-1, *masks.shape[-2:]) > mask_threshold).to(torch.uint8).cpu().numpy()
            rles = _rle_encode(binary)
        for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            result = {"image_id": int(image_id), "category_id": int(label_to_category[label]),
                      "bbox": [round(v, 2) for v in box], "score": float(score)}
            if masks is not None:
                result["segmentation"] = rles[k]
            results.append(result)
    return results


def category_mapping(categories: Sequence[Mapping[str, Any]]) -> Dict[int, int]:
    """COCO 'categories' -> {contiguous label 1..C: category id}, in increasing id order (torchvision/detectron2)."""
    ids = sorted(int(c["id"]) for c in categories)
    return {label: cat_id for label, cat_id in enumerate(ids, start=1)}


def checkpoint_label_mapping(state: Mapping[str, Any], categories: Sequence[Mapping[str, Any]], *,
                             where: str) -> Tuple[Dict[int, int], Optional[str]]:
    """{contiguous label: category id of `categories`} for evaluating a tools/train_det.py checkpoint on data whose
    COCO 'categories' are `categories`, and a note when labels had to be remapped (else None).

    The checkpoint records what its labels meant ("label_to_category" and "categories": ids and names of its
    training data). Same ids with the same names: that mapping. The same names under other ids (another json of the
    same classes): remapped by name, and the note says so. A category name of the checkpoint missing from the data,
    or another number of categories: ValueError naming both sides, since scoring label k against whatever category
    k is in the new data counts detections against the wrong classes. A checkpoint without the record (older
    files) gets the data's own order, as before.
    """
    data = category_mapping(categories)
    trained = state.get("label_to_category") or {}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in state.get("categories") or []}
    if not trained or not names:
        return data, None
    data_names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    shown = ", ".join(f"{i}:{n}" for i, n in sorted(data_names.items())[:8])
    if len(trained) != len(data_names):
        raise ValueError(f"{where} was trained on {len(trained)} categories ({', '.join(sorted(names.values())[:8])}) "
                         f"but the data has {len(data_names)} ({shown}); evaluate it on data of the same categories")
    by_name: Dict[str, int] = {}
    for cat_id, name in data_names.items():
        if name in by_name:
            raise ValueError(f"the data's categories name {name!r} twice (ids {by_name[name]} and {cat_id})")
        by_name[name] = cat_id
    mapping, moved = {}, []
    for label, cat_id in sorted((int(k), int(v)) for k, v in trained.items()):
        name = names.get(cat_id, str(cat_id))
        if data_names.get(cat_id) == name:
            mapping[label] = cat_id
        elif name in by_name:
            mapping[label] = by_name[name]
            moved.append(f"{name} {cat_id}->{by_name[name]}")
        else:
            raise ValueError(f"{where} has category {name!r} (id {cat_id}), which the data does not have "
                             f"(categories {shown}); evaluate it on data of the same categories")
    note = f"categories matched to the checkpoint's by name (ids differ): {', '.join(moved)}" if moved else None
    return mapping, note
