"""A train_det checkpoint's detections on the images of a COCO json, as COCO results (tools/eval_coco.py --checkpoint).

    results = detect_coco_images("out/last.pt", "val.json", "val/", device="cpu")   # then evaluate_coco(gt, results)

Everything a run could fail on mid-way is checked before the model sees the first image, and every user error
arrives as one CocoEvalError line: the ground truth's types, the device and amp, the checkpoint and its config
(load_detector), images the model cannot resize, the category mapping, image files missing from the folder.
(Batched inference through one shared evaluation path is step 13 of docs/dev/engine_refactor_plan.md.)
"""
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..data.errors import DataError
from ..data.folders import read_image
from ..data.images import image_to_tensor
from ..data.resizable import check_coco_images_resizable
from ..engine.device import autocast, resolve_amp, resolve_device
from .coco import CocoEvalError, load_json
from .coco_checks import check_ground_truth
from .coco_results import to_coco_results
from .inference import load_detector

PathLike = Union[str, os.PathLike]


def detect_coco_images(checkpoint: PathLike, gt_path: PathLike, images: PathLike, *,
                       config: Optional[PathLike] = None, overrides: Sequence[str] = (), device: str = "auto",
                       amp: str = "auto", iou_types: Sequence[str] = ("bbox",)) -> List[Dict[str, Any]]:
    """COCO results of `checkpoint` (its config: `config`, else the one beside it; `overrides` key=value) on every
    image of the COCO json `gt_path`, read from the folder `images`, with the json's category ids (by name when the
    checkpoint's ids differ). Prints the amp, a note on the category mapping, and the count and time.
    Raises CocoEvalError (one line) for every user error."""
    if not images:
        raise CocoEvalError("--checkpoint needs --images (the --gt image folder)")
    if not Path(checkpoint).is_file():
        raise CocoEvalError(f"checkpoint file not found: {checkpoint}")
    if not Path(images).is_dir():
        raise CocoEvalError(f"image folder not found: {images}")
    gt = load_json(gt_path, "ground-truth")
    check_ground_truth(gt, source=gt_path, iou_types=iou_types)  # before the model runs on every image
    try:  # unknown device, CUDA asked for on a machine without it, fp16 on CPU
        torch_device = resolve_device(device)
        mode, reason = resolve_amp(amp, torch_device)
        loaded = load_detector(checkpoint, config, overrides=overrides, device=torch_device)
    except ValueError as error:  # ConfigError, CheckpointError: the first line names the file
        raise CocoEvalError(str(error).splitlines()[0]) from None
    icfg = loaded.cfg.model.input
    try:  # a 10000x50 strip would shrink under a pixel across and fail inside interpolate, mid-run
        check_coco_images_resizable(gt.get("images", []), source=gt_path, min_size=icfg.min_size[-1],
                                    max_size=icfg.max_size)
        print(f"amp: {mode} ({reason if amp == 'auto' else 'set by --amp'})", flush=True)
        mapping, note = loaded.label_mapping(gt["categories"])  # each label scored as the category it learnt
    except ValueError as error:
        raise CocoEvalError(str(error)) from None
    if note:
        print(f"note: {note}", flush=True)
    missing = [im for im in gt["images"] if not (Path(images) / str(im.get("file_name"))).is_file()]
    if missing:  # was a DataError traceback at that image, mid-run
        raise CocoEvalError(f"{len(missing)} image(s) of {gt_path} are not in --images {images} (first: "
                            f"{missing[0].get('file_name')}, id {missing[0].get('id')}); give the image folder of --gt")
    return _detect(loaded.model, gt["images"], Path(images), torch_device, mode, mapping)


def _detect(model, image_records, folder: Path, device: torch.device, amp: str, mapping) -> list:
    results = []
    started = time.perf_counter()
    with torch.no_grad(), autocast(device, amp):  # detections come out float32 either way (fp32_outputs.py)
        for image in image_records:
            try:
                pixels = read_image(folder / image["file_name"])  # RGB uint8 [H, W, 3]
            except DataError as error:  # corrupt or not an image: named, one line
                raise CocoEvalError(str(error)) from None
            output = model([image_to_tensor(pixels).to(device)])[0]
            results += to_coco_results([output], [image["id"]], mapping)
    print(f"detected {len(results)} objects on {len(image_records)} images in {time.perf_counter() - started:.1f} s")
    return results
