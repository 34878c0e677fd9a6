"""A whole detector (transform, backbone, FPN, RPN, RoI heads, post-processing) in one file that runs without
resbackbones: TorchScript `.pt` (torch + torchvision), torch.export `.pt2` (torch + torchvision), or ONNX `.onnx`
(onnxruntime alone; written by the dynamo exporter, opset 18, checked with onnx.checker).

    export_detector(model, "detector.pt2", fmt="export", label_names=["__background__", "cat", ...])
    detector = resbackbones.deploy.load("detector.pt2")   # the eager interface over any of the three formats
    detections = detector([image])         # image float [3, H, W] RGB in [0, 1], any size; one dict per image:
                                           # boxes [K, 4] xyxy input pixels, labels [K], scores [K], (masks [K, 1, H, W])
    detector.label_names[label]            # category name of a label (0: "__background__")

Without resbackbones: TorchScript: `torch.jit.load(p)([image])` (a list in, a list of dicts out, .label_names).
`.pt2` / `.onnx`: one image [3, H, W] (H, W from 32 to 4096) in, the tuple (boxes, labels, scores(, masks)) out;
label names, output names, label_to_category in the file's JSON: the .pt2's state_dict["resbackbones_json"]
(uint8), the ONNX metadata "resbackbones.json". Those two graphs come from deploy/exportable.py (why torchvision's
R-CNN needs rewriting for them there); one file takes any image height and width in that range; the batch is one
image per call (the loader loops).
"""
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..io.outputs import save_exported_program_atomic, save_torchscript_atomic, write_bytes_atomic
from ..utils.errors import DeployError
from .exportable import MIN_RESIZED, ExportableDetector
from .load import MAX_SIDE, METADATA, METADATA_BUFFER, MIN_SIDE, check_images, load
from .scriptable import deployable

FORMATS = ("torchscript", "export", "onnx")


def export_facts(loaded) -> dict:
    """What an exported file records of its checkpoint (`loaded`: evaluation.inference.LoadedDetector), read back by
    deploy.load(...).metadata: label_to_category and categories (how eval_coco maps its labels to category ids),
    and the evaluation settings of its config, test.mask_threshold and test.max_dets (eval_coco's defaults for the
    file: a crowded set's max_dets such as [1, 10, 400] travels with its model)."""
    return {"label_to_category": {str(k): v for k, v in loaded.label_to_category.items()},
            "categories": loaded.categories,
            "evaluation": {"mask_threshold": loaded.cfg.test.mask_threshold,
                           "max_dets": list(loaded.cfg.test.max_dets)}}


class DeployedDetector(nn.Module):
    """The scripted module saved: forward(images) -> detections (torchvision's eval output, not its (losses,
    detections) pair under scripting) and label_names, indexed by label."""

    label_names: List[str]
    metadata: str  # JSON: label_to_category, categories (what eval_coco needs to score the file's labels)

    def __init__(self, model: nn.Module, label_names: Sequence[str], metadata: str = "{}"):
        super().__init__()
        self.model = model
        self.label_names = list(label_names)
        self.metadata = metadata

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        # The file's own refusal, for users without resbackbones.deploy.load (which checks the same before).
        if len(images) == 0:
            raise ValueError("expected a list of images (float RGB tensors [3, H, W] in [0, 1]), got an empty list")
        for i, image in enumerate(images):
            if not image.is_floating_point() or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError("image " + str(i) + ": expected a float RGB tensor [3, H, W] in [0, 1], got "
                                 + str(image.dtype) + " " + str(image.shape))
        losses, detections = self.model(images)  # scripted GeneralizedRCNN; used only through torch.jit.script
        return detections


def export_detector(model: nn.Module, path, *, fmt: str = "torchscript", label_names: Optional[Sequence[str]] = None,
                    example: Optional[Tensor] = None, metadata: Optional[dict] = None) -> Path:
    """Write `model` (a build_detector detector) to `path` in format `fmt` (FORMATS); returns the path.

    label_names: indexed by label (0 = background); default: the labels as text. example: an image [3, H, W] for
    the tracing formats (export, onnx); default: a random image of the transform's min size. metadata: JSON-able
    facts stored in the file (the tool: label_to_category and categories of the checkpoint), read back by load().
    """
    if fmt not in FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    path = Path(path)
    ready = deployable(model).cpu().float()
    if label_names is None:
        label_names = _default_names(ready)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch.jit is deprecated but is what torchvision's R-CNN supports
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(DeployedDetector(ready, label_names, json.dumps(metadata or {})))
            return save_torchscript_atomic(scripted, path)
    return write_exported(ready, {fmt: path}, label_names=label_names, example=example, metadata=metadata)[fmt]


def _default_names(ready: nn.Module) -> List[str]:
    """The labels as text, "__background__" at 0."""
    return ["__background__"] + [str(i) for i in range(1, ready.roi_heads.box_predictor.cls_score.out_features)]


def write_exported(model: nn.Module, paths: Dict[str, Path], *, label_names: Optional[Sequence[str]] = None,
                   example: Optional[Tensor] = None, metadata: Optional[dict] = None) -> Dict[str, Path]:
    """The graph formats ("export" -> .pt2, "onnx" -> .onnx) of `model` written to paths[fmt] from one
    torch.export capture (the slow step, shared); returns paths."""
    ready = deployable(model).cpu().float()
    if label_names is None:
        label_names = _default_names(ready)
    if example is None:
        size = int(ready.transform.min_size[-1])
        example = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    check_images([example], min_side=MIN_SIDE, max_side=MAX_SIDE)
    if "onnx" in paths:
        _require_onnx()  # before the capture, which takes minutes
    outputs = ["boxes", "labels", "scores"] + (["masks"] if ready.roi_heads.has_mask() else [])
    meta = json.dumps({**(metadata or {}), "label_names": list(label_names), "outputs": outputs,
                       "min_side": MIN_SIDE, "max_side": MAX_SIDE,
                       "resize": [float(ready.transform.min_size[-1]), float(ready.transform.max_size), MIN_RESIZED],
                       "input": "image float RGB [3, H, W] in [0, 1], one per call"})
    program = export_program(ready, example, meta)
    if "export" in paths:  # before the ONNX conversion, which decomposes the program in place
        save_exported_program_atomic(program, Path(paths["export"]))
    if "onnx" in paths:
        write_bytes_atomic(Path(paths["onnx"]), onnx_bytes(program, outputs, meta))
    return {fmt: Path(p) for fmt, p in paths.items()}


def export_program(ready: nn.Module, example: Tensor, meta: str = "{}") -> "torch.export.ExportedProgram":
    """torch.export of ExportableDetector(ready) with a dynamic image height and width (MIN_SIDE..MAX_SIDE), `meta`
    (JSON) in its state_dict under METADATA_BUFFER; DeployError in one line when torch cannot capture it."""
    detector = ExportableDetector(ready).eval()
    # An unused buffer still travels in the .pt2's state_dict: the file's facts without a second writer beside
    # io.outputs.save_exported_program_atomic (torch.export.save's extra_files would need one).
    detector.register_buffer(METADATA_BUFFER, torch.tensor(list(meta.encode()), dtype=torch.uint8))
    side = dict(min=MIN_SIDE, max=MAX_SIDE)
    shapes = ({1: torch.export.Dim("height", **side), 2: torch.export.Dim("width", **side)},)
    try:  # a failed capture prints the partial graph (thousands of lines) on stderr: keep it off the console
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torchvision's nms fake kernel: create_unbacked_symint is deprecated
            return torch.export.export(detector, (example,), dynamic_shapes=shapes,
                                       strict=False)
    except Exception as error:  # torch's own limitation on this graph, not a bug of the caller
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DeployError(f"torch.export cannot capture this detector ({first[:200]}); use --format torchscript") \
            from None


def _require_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ImportError:
        raise DeployError("--format onnx needs the onnx and onnxscript packages: pip install onnx onnxscript (and "
                          "onnxruntime to run the file), or use --format torchscript or export") from None
    return onnx


def _roi_pool_onnx(features, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """torchvision::roi_pool as ONNX MaxRoiPool (the same Caffe RoIPooling maths; rois [R, 5] batch index first).

    Written here because onnxscript's own translation of this op takes (input, boxes, output_size, spatial_scale),
    not the op's schema (input, rois, spatial_scale, pooled_height, pooled_width), and fails on every graph that
    holds it (onnxscript 0.7.2). The op's second output, the argmax, serves only the backward pass: nothing in
    an inference graph reads it, so a placeholder of its shape and dtype stands in."""
    from onnxscript import INT64
    from onnxscript import opset18 as op
    pooled = op.MaxRoiPool(features, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
    return pooled, op.Cast(pooled, to=INT64.dtype)


def onnx_bytes(program, outputs: Sequence[str], meta: str) -> bytes:
    """The ONNX model (dynamo exporter, opset 18, torchlib's NonMaxSuppression / RoiAlign for torchvision's ops)
    of an ExportedProgram, with `meta` under the METADATA key; checked with onnx.checker."""
    onnx = _require_onnx()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.onnx.export(program, dynamo=True, opset_version=18, input_names=["image"],
                                     output_names=list(outputs), verbose=False,
                                     custom_translation_table={torch.ops.torchvision.roi_pool.default: _roi_pool_onnx})
    proto = exported.model_proto
    onnx.helper.set_model_props(proto, {METADATA: meta})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def max_differences(expected: Dict[str, Tensor], got: Dict[str, Tensor]) -> Dict[str, float]:
    """Largest |difference| per output key of one image's detections; inf where counts or keys differ."""
    out = {}
    for key in expected:
        a, b = expected[key], got.get(key)
        if b is None or a.shape != b.shape:
            out[key] = float("inf")
        else:
            out[key] = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return out


def run_exported(path, fmt: str, image: Tensor) -> Dict[str, Tensor]:
    """One image's detections from an exported file, through load() (the deployment's interface)."""
    return load(path)([image])[0]


def check_export(model: nn.Module, path, fmt: str, image: Tensor) -> Dict[str, float]:
    """max_differences between `model` (eager, float32, CPU) and the exported file on `image` [3, H, W] in [0, 1]."""
    model = model.eval().cpu().float()
    with torch.no_grad():
        expected = model([image])[0]
        got = run_exported(path, fmt, image)
    return max_differences(expected, got)
