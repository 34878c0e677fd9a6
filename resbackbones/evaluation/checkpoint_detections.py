"""A train_det checkpoint's detections on the images of a COCO json, as COCO results (tools/eval_coco.py --checkpoint).

    found = run_checkpoint_on_coco("out/checkpoints/last.pt", "val.json", "val/", device="cpu")
    evaluate_coco(gt, found.detections, max_dets=found.cfg.test.max_dets)   # what tools/eval_coco.py does

Everything a run could fail on mid-way is checked before the model sees the first image, and every user error
arrives as one CocoEvalError line: the ground truth's types, the device and amp, the checkpoint and its config
(load_detector), images the model cannot resize, the category mapping, image files missing from the folder.
The images go through the one evaluation path (evaluation/inference.py: inference_on_dataset) with the test loader
(data/loaders.build_det_test_loader: batches of one padded shape, decoded in data.num_workers processes), mask
threshold and amp of train_det's evaluation, so both report the same detections, and test.batch_size changes
them only by the float rounding of batched kernels (about 1e-5 px on CPU).
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..config.det import DetTrainConfig
from ..data.coco_format import check_ground_truth
from ..data.errors import DataError
from ..data.loaders import build_det_test_loader
from ..data.resizable import check_coco_images_resizable
from ..utils.amp import resolve_amp, resolve_device
from .coco import CocoEvalError, load_json
from .coco_evaluator import COCODetections
from .inference import inference_on_dataset, load_detector

PathLike = Union[str, os.PathLike]


@dataclass
class CheckpointDetections:
    """What run_checkpoint_on_coco found: the COCO results, the config the model was rebuilt with (its test
    section: max_dets, backend for the scoring) and the autocast precision used."""

    detections: List[Dict[str, Any]]
    cfg: DetTrainConfig
    amp: str

    @property
    def max_dets(self) -> Tuple[int, ...]:
        """COCOeval's max_dets of the checkpoint's config (test.max_dets)."""
        return self.cfg.test.max_dets


def run_checkpoint_on_coco(checkpoint: PathLike, gt_path: PathLike, images: PathLike, *,
                           config: Optional[PathLike] = None, overrides: Sequence[str] = (), device: str = "auto",
                           amp: Optional[str] = None, iou_types: Sequence[str] = ("bbox",)) -> CheckpointDetections:
    """COCO results of `checkpoint` (evaluation.inference.load_detector: the config it records, else `config` or
    the one beside it; `overrides` key=value) on every image of the COCO json `gt_path`, read from the folder
    `images`, with the json's category ids (by name when the checkpoint's ids differ). Runs through
    inference_on_dataset as train_det's evaluation does: batches of up to test.batch_size images of one padded
    shape (data/loaders.build_det_test_loader, data.num_workers decoding processes), test.mask_threshold,
    autocast at `amp` (None: test.amp, else train.amp). Prints the amp, a note on the category mapping, and the count
    and time. Raises CocoEvalError (one line) for every user error."""
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
        loaded = load_detector(checkpoint, config, overrides=overrides, device=torch_device)
        test = loaded.cfg.test
        mode, reason = resolve_amp(amp or test.amp or loaded.cfg.train.amp, torch_device)
    except ValueError as error:  # ConfigError, CheckpointError: the first line names the file
        raise CocoEvalError(str(error).splitlines()[0]) from None
    if loaded.note:
        print(loaded.note, flush=True)
    icfg = loaded.cfg.model.input
    try:  # a 10000x50 strip would shrink under a pixel across and fail inside interpolate, mid-run
        check_coco_images_resizable(gt.get("images", []), source=gt_path, min_size=icfg.min_size[-1],
                                    max_size=icfg.max_size)
        print(f"amp: {mode} ({'set by --amp' if amp not in (None, 'auto') else reason})", flush=True)
        mapping, note = loaded.label_mapping(gt["categories"])  # each label scored as the category it learnt
    except ValueError as error:
        raise CocoEvalError(str(error)) from None
    if note:
        print(f"note: {note}", flush=True)
    missing = [im for im in gt["images"] if not (Path(images) / str(im.get("file_name"))).is_file()]
    if missing:  # was a DataError traceback at that image, mid-run
        raise CocoEvalError(f"{len(missing)} image(s) of {gt_path} are not in --images {images} (first: "
                            f"{missing[0].get('file_name')}, id {missing[0].get('id')}); give the image folder of --gt")
    started = time.perf_counter()
    collector = COCODetections(mapping, mask_threshold=test.mask_threshold)
    records = [{"path": Path(images) / str(im["file_name"]), "image_id": im["id"],
                **{k: im[k] for k in ("height", "width") if k in im}}
               for im in sorted(gt["images"], key=lambda im: im["id"])]  # train_det's order (data/coco.py)
    loader = build_det_test_loader(records, batch_size=test.batch_size, num_workers=loaded.cfg.data.num_workers,
                                   rank=0, world=1, transform=loaded.model.transform)
    try:
        inference_on_dataset(loaded.model, loader, collector, device=torch_device, amp=mode)
    except DataError as error:  # corrupt, not an image, or not the json's size: named, one line
        raise CocoEvalError(str(error)) from None
    found = collector.detections
    print(f"detected {len(found)} objects on {len(gt['images'])} images in {time.perf_counter() - started:.1f} s")
    return CheckpointDetections(found, loaded.cfg, mode)


def detect_coco_images(checkpoint: PathLike, gt_path: PathLike, images: PathLike, *,
                       config: Optional[PathLike] = None, overrides: Sequence[str] = (), device: str = "auto",
                       amp: Optional[str] = "auto", iou_types: Sequence[str] = ("bbox",)) -> List[Dict[str, Any]]:
    """run_checkpoint_on_coco(...).detections (amp None: the config's)."""
    return run_checkpoint_on_coco(checkpoint, gt_path, images, config=config, overrides=overrides, device=device,
                                  amp=amp, iou_types=iou_types).detections

