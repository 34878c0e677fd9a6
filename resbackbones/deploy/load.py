"""load(path): an exported detector (TorchScript `.pt`, torch.export `.pt2`, ONNX `.onnx`) as a callable with the
eager model's interface.

    detector = load("det.onnx")
    detections = detector([image, ...])   # image: float RGB [3, H, W] in [0, 1]; one dict per image:
                                          # boxes [K, 4] xyxy input pixels, labels [K] int64, scores [K],
                                          # masks [K, 1, H, W] probabilities (Mask R-CNN)
    detector.label_names[label]           # category name (0: "__background__")

A wrong input (empty list, uint8, HWC, 4 channels, a size outside the exported range) is refused before the file
runs, with one ValueError naming the image's index and shape: the exported graphs themselves only fail deep inside
(an index error in TorchScript, an input-guard assertion in `.pt2`, an InvalidArgument in onnxruntime).
"""
import json
import logging
import math
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

METADATA = "resbackbones.json"  # the ONNX metadata key holding label names, outputs, label_to_category, ...
METADATA_BUFFER = "resbackbones_json"  # the same JSON as uint8 in a .pt2's state_dict
MIN_SIDE, MAX_SIDE = 32, 4096  # the image sizes the .pt2 / .onnx graphs are exported for (torch.export.Dim range)


def describe(image) -> str:
    """'float32 [3, 480, 640]' for a tensor, the type name otherwise."""
    if isinstance(image, Tensor):
        return f"{str(image.dtype).replace('torch.', '')} {list(image.shape)}"
    return type(image).__name__


def check_images(images, *, min_side: int = 1, max_side: Optional[int] = None, resize=None) -> None:
    """ValueError (one line) unless images is a non-empty list of float RGB tensors [3, H, W] with
    min_side <= H, W <= max_side, and (resize = (min_size, max_size, smallest)) whose sides after the detector's
    resize are at least `smallest` pixels."""
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise ValueError(f"expected a list of images (float RGB tensors [3, H, W] in [0, 1]), got {describe(images)}")
    if len(images) == 0:
        raise ValueError("expected a list of images (float RGB tensors [3, H, W] in [0, 1]), got an empty list")
    for i, image in enumerate(images):
        hint = ""
        if not isinstance(image, Tensor):
            hint = ""
        elif not image.is_floating_point():
            hint = " (integer pixels: use image.float() / 255)" if image.dtype == torch.uint8 else ""
        elif image.dim() == 3 and image.shape[-1] in (1, 3, 4) and image.shape[0] not in (1, 3, 4):
            hint = " (channels last: use image.permute(2, 0, 1))"
        elif image.dim() == 3 and image.shape[0] == 4:
            hint = " (RGBA: drop the alpha channel, image[:3])"
        elif image.dim() == 3 and image.shape[0] == 3:
            low, high = min(image.shape[1:]), max(image.shape[1:])
            if low >= min_side and (max_side is None or high <= max_side):
                if resize is None:
                    continue
                scale = min(resize[0] / low, resize[1] / high)  # the detector's resize (exportable._resize)
                if math.floor(low * scale) >= resize[2]:
                    continue
                hint = (f" (its short side would be resized to {math.floor(low * scale)} pixels, under the "
                        f"{resize[2]} this file takes: aspect ratio too extreme)")
            else:
                hint = f" (this file takes sides of {min_side} to {max_side} pixels)"
        raise ValueError(f"image {i}: expected a float RGB tensor [3, H, W] in [0, 1], got {describe(image)}{hint}")


class ExportedDetector:
    """An exported detector file run with the eager model's interface: __call__(images) -> list of dicts."""

    def __init__(self, path: Path, fmt: str, label_names: Sequence[str], outputs: Sequence[str], run_one,
                 max_side: Optional[int] = None, min_side: int = 1, providers=(),
                 metadata: Optional[dict] = None):
        self.path, self.format = path, fmt
        # what the exporter stored besides the names (the tool: label_to_category, categories), for eval_coco
        self.metadata = {k: v for k, v in (metadata or {}).items() if k not in ("label_names", "outputs")}
        self.label_names: List[str] = list(label_names)
        self.outputs = list(outputs)
        self.providers = list(providers)
        self._run_one = run_one
        self._min_side, self._max_side = min_side, max_side
        self._resize = self.metadata.get("resize")

    def __repr__(self) -> str:
        return f"ExportedDetector({str(self.path)!r}, format={self.format!r}, {len(self.label_names)} labels)"

    def __call__(self, images: Sequence[Tensor]) -> List[Dict[str, Tensor]]:
        check_images(images, min_side=self._min_side, max_side=self._max_side, resize=self._resize)
        images = [image.detach().to("cpu", torch.float32).contiguous() for image in images]
        with torch.no_grad():
            return [self._as_dict(self._run_one(image)) for image in images]

    def _as_dict(self, result) -> Dict[str, Tensor]:
        return dict(result) if isinstance(result, dict) else dict(zip(self.outputs, result))


def _metadata(text: str, path: Path) -> dict:
    try:
        data = json.loads(text)
        assert isinstance(data["label_names"], list) and isinstance(data["outputs"], list)
        return data
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{path}: not a detector exported by resbackbones (no {METADATA} metadata)") from None


def load(path, *, num_threads: Optional[int] = None) -> ExportedDetector:
    """An exported detector file (.pt TorchScript, .pt2 torch.export, .onnx) as an ExportedDetector on the CPU
    (ONNX: CUDAExecutionProvider first when onnxruntime has it). ValueError for another suffix or a file that is
    not one of ours; FileNotFoundError when missing.

    num_threads: CPU threads of an ONNX file's onnxruntime session; default torch.get_num_threads(), so that every
    format runs on as many threads as the eager model (OMP_NUM_THREADS / torch.set_num_threads decide for all;
    onnxruntime's own default is every core, whatever torch was told). .pt / .pt2 run on torch's threads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported detector not found: {path}")
    import torchvision  # noqa: F401  (registers torchvision::nms / roi_align, which every format calls)

    suffix = path.suffix.lower()
    if suffix == ".pt":
        with warnings.catch_warnings():  # torch.jit's deprecation warning; the file is what it is
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
        if not hasattr(module, "label_names"):
            raise ValueError(f"{path}: not a detector exported by resbackbones (no label_names)")
        keys = ["boxes", "labels", "scores"]

        def run_one(image):
            # One image per call, as the graph formats: torchvision pads a batch to its largest image, and that
            # padding changes the features near the border, so a batch's detections depend on its other images.
            with warnings.catch_warnings():  # "RCNN always returns a (Losses, Detections) tuple in scripting"
                warnings.simplefilter("ignore")
                return module([image])[0]
        meta = json.loads(module.metadata) if hasattr(module, "metadata") else {}
        return ExportedDetector(path, "torchscript", module.label_names, keys, run_one=run_one, metadata=meta)
    if suffix == ".pt2":
        if not zipfile.is_zipfile(path):  # torch.export.load would log a traceback for it before raising
            raise ValueError(f"{path}: not a torch.export .pt2 archive (not a zip file: truncated or another format)")
        logger = logging.getLogger("torch.export")
        level, logger.level = logger.level, logging.ERROR  # its "Ran into the following error" retry warning
        try:
            program = torch.export.load(str(path))
        finally:
            logger.setLevel(level)
        raw = program.state_dict.get(METADATA_BUFFER)
        meta = _metadata(bytes(raw.numpy()).decode("utf-8", "replace") if raw is not None else "", path)
        module = program.module()
        return ExportedDetector(path, "export", meta["label_names"], meta["outputs"], run_one=module,
                                min_side=meta.get("min_side", 1), max_side=meta.get("max_side"), metadata=meta)
    if suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ValueError("running an ONNX file needs onnxruntime: pip install onnxruntime") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the optimiser's "could not constant-fold CastLike" notes are not errors
        options.intra_op_num_threads = int(num_threads) if num_threads else torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        meta = _metadata(session.get_modelmeta().custom_metadata_map.get(METADATA, ""), path)
        name = session.get_inputs()[0].name

        def run_one(image):
            return [torch.from_numpy(v) for v in session.run(None, {name: image.numpy()})]
        return ExportedDetector(path, "onnx", meta["label_names"], meta["outputs"], run_one=run_one,
                                min_side=meta.get("min_side", 1), max_side=meta.get("max_side"),
                                providers=session.get_providers(), metadata=meta)
    raise ValueError(f"{path}: unknown exported detector suffix {path.suffix!r} (.pt, .pt2 or .onnx)")
