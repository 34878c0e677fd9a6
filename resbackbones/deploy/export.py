"""A whole detector (transform, backbone, FPN, RPN, RoI heads, post-processing) in one file that runs without
resbackbones: TorchScript (torch + torchvision), or ONNX when the onnx package is installed.

    export_detector(model, "detector.pt", fmt="torchscript", label_names=["__background__", "cat", ...])

    # in the deployment, without resbackbones:
    import torch, torchvision              # torchvision registers the nms / roi_align ops the file calls
    model = torch.jit.load("detector.pt")
    detections = model([image])            # image float [3, H, W] RGB in [0, 1], any size; one dict per image:
                                           # boxes [K, 4] xyxy input pixels, labels [K], scores [K], (masks [K, 1, H, W])
    model.label_names[label]               # category name of a label (0: "__background__")

torch.export cannot capture torchvision's R-CNN yet (data-dependent box counts in NMS and mask pasting,
pytorch/pytorch#118884): fmt="export" is attempted and refused in one line when it fails.
"""
import contextlib
import io
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..io.outputs import save_exported_program_atomic, save_torchscript_atomic, write_serialized_atomic
from .scriptable import deployable

FORMATS = ("torchscript", "export", "onnx")


class DeployError(ValueError):
    """The export cannot be made (missing optional package, a format torch cannot capture); one line."""


class DeployedDetector(nn.Module):
    """The scripted module saved: forward(images) -> detections (torchvision's eval output, not its (losses,
    detections) pair under scripting) and label_names, indexed by label."""

    label_names: List[str]

    def __init__(self, model: nn.Module, label_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.label_names = list(label_names)

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        losses, detections = self.model(images)  # scripted GeneralizedRCNN; used only through torch.jit.script
        return detections


def export_detector(model: nn.Module, path, *, fmt: str = "torchscript", label_names: Optional[Sequence[str]] = None,
                    example: Optional[Tensor] = None) -> Path:
    """Write `model` (a build_detector detector) to `path` in format `fmt` (FORMATS); returns the path.

    label_names: indexed by label (0 = background); default: the labels as text. example: an image [3, H, W] for
    the tracing formats (export, onnx); default: a random image of the transform's min size.
    """
    if fmt not in FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    path = Path(path)
    ready = deployable(model).cpu().float()
    if label_names is None:
        label_names = ["__background__"] + [str(i) for i in range(1, ready.roi_heads.box_predictor.cls_score.out_features)]
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch.jit is deprecated but is what torchvision's R-CNN supports
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(DeployedDetector(ready, label_names))
            return save_torchscript_atomic(scripted, path)
    if example is None:
        size = int(ready.transform.min_size[-1])
        example = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise DeployError("--format onnx needs the onnx package: pip install onnx (and onnxruntime to run the "
                              "file), or use --format torchscript") from None
        outputs = ["boxes", "labels", "scores"] + (["masks"] if ready.roi_heads.has_mask() else [])
        write_serialized_atomic(path, lambda buffer: torch.onnx.export(
            ready, ([example],), buffer, dynamo=False, opset_version=17, input_names=["image"], output_names=outputs,
            dynamic_axes={"image": {1: "height", 2: "width"}, **{o: {0: "detections"} for o in outputs}}))
        onnx.checker.check_model(str(path))
        return path
    try:  # a failed capture prints the partial graph (thousands of lines) on stderr: keep it off the console
        with contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.export(_SingleImage(ready), (example,), strict=False)
    except Exception as error:  # torch's own limitation on this graph, not a bug of the caller
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DeployError(f"torch.export cannot capture this detector ({first[:160]}): torchvision's R-CNN has "
                          f"data-dependent box counts (pytorch/pytorch#118884); use --format torchscript") from None
    return save_exported_program_atomic(program, path)


class _SingleImage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Dict[str, Tensor]:
        return self.model([image])[0]


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
    """One image's detections from an exported file, loaded the way a deployment loads it."""
    import torchvision  # noqa: F401  (registers torchvision::nms / roi_align for the TorchScript file)

    if fmt == "torchscript":
        with warnings.catch_warnings():  # deprecation of torch.jit; "RCNN always returns a (Losses, Detections) ..."
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path))([image])[0]
    if fmt == "export":
        return torch.export.load(str(path)).module()(image)
    try:
        import onnxruntime
    except ImportError:
        raise DeployError("checking an ONNX file needs onnxruntime: pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(None, {"image": image.numpy()})
    return {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), values)}


def check_export(model: nn.Module, path, fmt: str, image: Tensor) -> Dict[str, float]:
    """max_differences between `model` (eager, float32, CPU) and the exported file on `image` [3, H, W] in [0, 1]."""
    model = model.eval().cpu().float()
    with torch.no_grad():
        expected = model([image])[0]
        got = run_exported(path, fmt, image)
    return max_differences(expected, got)
