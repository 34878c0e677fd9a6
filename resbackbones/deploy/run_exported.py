"""An exported detector file (tools/export_detector.py: TorchScript .pt, torch.export .pt2, ONNX .onnx) wherever the
tools take a checkpoint: tools/eval_coco.py --checkpoint and tools/predict.py --checkpoint.

    if is_exported(path):                       # by content: a TorchScript .pt is a torch.jit archive, not a checkpoint
        found = run_on_coco(path, "val.json", "val/")    # COCO results, the file's own label_to_category

The file runs as exported: one image per call, float32, its own thresholds, input size and label mapping. Options
that would change its results (key=value overrides of the model, --config, --amp bf16/fp16, a CUDA --device) are
refused in one line rather than silently ignored. How its detections are scored is not the file's: eval_coco takes
test.mask_threshold and test.max_dets overrides, by default the values the export recorded from its checkpoint's
config (files exported before that: 0.5 and (1, 10, 100)). A file that is not an exported detector (a text file named .onnx, a truncated
.pt2) is one ValueError naming it. (Here and not in evaluation/: evaluation must not import deploy.)
"""
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..config import load_config
from ..config.det import DetTrainConfig
from ..data.coco_format import check_ground_truth
from ..data.errors import DataError
from ..data.loaders import ImageRecords, build_det_test_loader
from ..evaluation.coco import CocoEvalError, load_json
from ..evaluation.coco_evaluator import COCODetections
from ..evaluation.coco_results import checkpoint_label_mapping
from ..evaluation.inference import detector_inputs
from .load import ExportedDetector, check_images, load

PathLike = Union[str, os.PathLike]
# Overrides that set how detections are scored, not what the exported model computes.
SCORING_KEYS = ("test.mask_threshold", "test.max_dets")


def is_exported(path: PathLike) -> bool:
    """Whether `path` names an exported detector rather than a training checkpoint: a .pt2 or .onnx suffix, or a
    .pt that is a TorchScript archive (torch.jit.save writes code/ and constants.pkl records; torch.save does not)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt2", ".onnx"):
        return True
    if suffix != ".pt" or not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def open_exported(path: PathLike) -> ExportedDetector:
    """deploy.load(path), every failure one ValueError naming the file (FileNotFoundError when missing)."""
    try:
        return load(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as error:  # noqa: BLE001 - onnxruntime's InvalidProtobuf, a truncated zip, ...: one line
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{path}: not a readable exported detector ({type(error).__name__}: {first})") from None


def scoring_settings(detector: ExportedDetector, overrides: Sequence[str] = ()) -> Tuple[float, Tuple[int, ...]]:
    """(mask_threshold, max_dets) to score `detector`'s detections with: the test.mask_threshold / test.max_dets
    overrides, else what the file recorded at export, else test's defaults (0.5, (1, 10, 100)). ConfigError (one
    line naming the key) for a bad value."""
    # Parsed and checked by the training schema's own test section (types, ranges, max_dets), as for a checkpoint.
    recorded = detector.metadata.get("evaluation") or {}
    test = load_config(DetTrainConfig, base={"test": dict(recorded)}, overrides=overrides,
                       base_source=f"{detector.path} (its recorded evaluation settings)").test
    return test.mask_threshold, tuple(test.max_dets)


def refuse_fixed_options(path: PathLike, *, overrides: Sequence[str] = (), config: Optional[PathLike] = None,
                         amp: Optional[str] = None, device: str = "auto", scoring: bool = False) -> None:
    """ValueError (one line) for an option that the exported file `path` fixed at export time; with `scoring`
    (eval_coco), the SCORING_KEYS overrides are not among them."""
    fixed = f"{path} is an exported detector: its model, thresholds and input size were fixed at export"
    model_overrides = [o for o in overrides if not (scoring and o.partition("=")[0] in SCORING_KEYS)]
    if model_overrides:
        allowed = f" (eval_coco takes {' and '.join(SCORING_KEYS)} for it)" if scoring else ""
        raise ValueError(f"{fixed}; re-export the checkpoint with {' '.join(model_overrides)} instead of overriding "
                         f"here{allowed}")
    if config:
        raise ValueError(f"{fixed}; --config {config} does not apply to it (drop --config)")
    if amp not in (None, "auto", "none"):
        raise ValueError(f"{fixed}; it runs in float32 as exported, --amp {amp} does not apply (drop --amp)")
    if str(device) not in ("auto", "cpu"):
        raise ValueError(f"{fixed}; it runs on the CPU (ONNX: CUDA when onnxruntime has it), not --device {device}")


def check_size(detector: ExportedDetector, name: Any, height: int, width: int) -> None:
    """DataError naming `name` when the file would refuse an image of height x width (size range, resize)."""
    try:
        check_images([torch.empty(3, height, width)], min_side=detector._min_side, max_side=detector._max_side,
                     resize=detector._resize)
    except ValueError as error:
        raise DataError(f"image {name} ({width}x{height}): {str(error).split(': ', 1)[-1]}") from None


def label_mapping(detector: ExportedDetector, categories: Sequence[Dict[str, Any]]) -> Tuple[Dict[int, int],
                                                                                            Optional[str]]:
    """{label: category id of `categories`} from the file's own label_to_category / categories, exactly as a
    checkpoint's (evaluation/coco_results.checkpoint_label_mapping), and the note when labels were remapped."""
    meta = detector.metadata
    record = {"label_to_category": {int(k): int(v) for k, v in (meta.get("label_to_category") or {}).items()},
              "categories": meta.get("categories") or []}
    return checkpoint_label_mapping(record, categories, where=f"exported file {detector.path}")


@dataclass
class ExportedDetections:
    """What run_on_coco found: the COCO results and COCOeval's max_dets to score them with."""

    detections: List[Dict[str, Any]]
    max_dets: Tuple[int, ...]


def detector_files(checkpoint: PathLike, config: Optional[PathLike] = None) -> Dict[str, Optional[Path]]:
    """The files the detector of `checkpoint` is read from, by flag (the tools' output checks): an exported file
    alone, a checkpoint with its config (evaluation.inference.detector_inputs)."""
    return {"--checkpoint": Path(checkpoint)} if is_exported(checkpoint) else detector_inputs(checkpoint, config)


def run_on_coco(checkpoint: PathLike, gt_path: PathLike, images: PathLike, *, config: Optional[PathLike] = None,
                overrides: Sequence[str] = (), device: str = "auto", amp: Optional[str] = None,
                iou_types: Sequence[str] = ("bbox",)):
    """COCO results of `checkpoint` on the images of `gt_path` (tools/eval_coco.py --checkpoint): a training
    checkpoint through evaluation.checkpoint_detections.run_checkpoint_on_coco, an exported file (is_exported)
    one image per call with its own label mapping, scored with scoring_settings (the mask threshold and max_dets it
    recorded, or test.mask_threshold / test.max_dets overrides). Either result has
    .detections and .max_dets. Raises CocoEvalError (one line) for every user error."""
    if not is_exported(checkpoint):
        from ..evaluation.checkpoint_detections import run_checkpoint_on_coco

        return run_checkpoint_on_coco(checkpoint, gt_path, images, config=config, overrides=overrides, device=device,
                                      amp=amp, iou_types=iou_types)
    if not images:
        raise CocoEvalError("--checkpoint needs --images (the --gt image folder)")
    if not Path(images).is_dir():
        raise CocoEvalError(f"image folder not found: {images}")
    gt = load_json(gt_path, "ground-truth")
    check_ground_truth(gt, source=gt_path, iou_types=iou_types)
    try:
        refuse_fixed_options(checkpoint, overrides=overrides, config=config, amp=amp, device=device, scoring=True)
        detector = open_exported(checkpoint)
        mask_threshold, max_dets = scoring_settings(detector, overrides)
        mapping, note = label_mapping(detector, gt["categories"])
        for im in gt["images"]:
            if isinstance(im.get("height"), int) and isinstance(im.get("width"), int):
                check_size(detector, f"{im.get('file_name')} (id {im.get('id')}) of {gt_path}", im["height"],
                           im["width"])
    except (ValueError, FileNotFoundError) as error:
        raise CocoEvalError(str(error).splitlines()[0]) from None
    print(f"amp: none (exported {detector.format} file: float32 as exported, one image per call)", flush=True)
    if note:
        print(f"note: {note}", flush=True)
    missing = [im for im in gt["images"] if not (Path(images) / str(im.get("file_name"))).is_file()]
    if missing:
        raise CocoEvalError(f"{len(missing)} image(s) of {gt_path} are not in --images {images} (first: "
                            f"{missing[0].get('file_name')}, id {missing[0].get('id')}); give the image folder of --gt")
    started = time.perf_counter()
    collector = COCODetections(mapping, mask_threshold=mask_threshold)
    records = [{"path": Path(images) / str(im["file_name"]), "image_id": im["id"],
                **{k: im[k] for k in ("height", "width") if k in im}}
               for im in sorted(gt["images"], key=lambda im: im["id"])]
    try:
        for batch in build_det_test_loader(records, batch_size=1, num_workers=0):
            collector.process(batch, detector([image for image, _ in batch]))
    except (DataError, ValueError) as error:
        raise CocoEvalError(str(error).splitlines()[0]) from None
    collector.evaluate()
    found = collector.detections
    print(f"detected {len(found)} objects on {len(gt['images'])} images in {time.perf_counter() - started:.1f} s")
    return ExportedDetections(found, max_dets)


def predict_exported(checkpoint: PathLike, paths: Sequence[Path], *, config: Optional[PathLike] = None,
                     overrides: Sequence[str] = (), amp: Optional[str] = None, device: str = "auto",
                     batch_size: int = 1) -> Tuple[Dict[int, str], Iterator[Tuple[Path, Any, Dict[str, torch.Tensor]]]]:
    """({label: name}, iterator of (path, RGB uint8 [H, W, 3], detections)) of the exported file `checkpoint` on
    `paths` (tools/predict.py): options it fixed are refused (refuse_fixed_options), sizes it cannot take are
    refused before any image is decoded, one image per call (batch_size only groups the decoding: the same
    detections). Prints the amp line."""
    from .predict import header_size

    refuse_fixed_options(checkpoint, overrides=overrides, config=config, amp=amp, device=device)
    detector = open_exported(checkpoint)
    print(f"amp: none (exported {detector.format} file: float32 as exported, one image per call)", flush=True)
    for path in paths:
        size = header_size(path)
        if size is not None:
            check_size(detector, path, *size)
    names = {i: str(n) for i, n in enumerate(detector.label_names) if i > 0}

    def run() -> Iterator[Tuple[Path, Any, Dict[str, torch.Tensor]]]:
        images = ImageRecords([{"path": p} for p in paths], keep_pixels=True, check_sizes=False)
        for batch in build_det_test_loader(images, batch_size=max(1, batch_size), num_workers=0):
            for image, target in batch:
                try:
                    output = detector([image])[0]
                except ValueError as error:
                    raise DataError(f"image {target['path']}: {str(error).split(': ', 1)[-1]}") from None
                yield target["path"], target["pixels"], output
    return names, run()
