"""int8 static post-training quantization of an exported ONNX detector (issue 22, item 3): the backbone + FPN
convolutions in int8 (QDQ, per-channel symmetric int8 weights, uint8 activations calibrated with MinMax on real
images), the RPN, RoI heads and post-processing left in float32.

    paths = calibration_images("data/val_images", limit=32)        # a folder of images, or a COCO json
    quantize_onnx("det_fp32.onnx", "det_int8.onnx", paths)        # same inputs, outputs and metadata as the fp32 file
    detector = resbackbones.deploy.load("det_int8.onnx")          # like any exported .onnx

Route: onnxruntime's `quantize_static` on the dynamo-exported float32 file, not PT2E. Measured (docs/dev/
deploy_plan.md, "int8"): PT2E's x86 inductor quantizer lives in torchao now (torch 2.14 here has no
torch.ao.quantization.quantize_pt2e; torchao is no dependency of ours), and its int8 speed comes only through
torch.compile (inductor + a C++ compiler, a compile per new image size under dynamic H/W), whose result is no file
that `deploy.load` or a deployment without torch can run. The ONNX route gives one `.onnx` file, loaded and run
like the float32 one (onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv).

Only Conv nodes whose weights are the backbone's (initializer names "backbone.*": body and FPN, the parameters of
ExportableDetector.backbone) are quantized, chosen by name in the graph; the RPN head's convolutions, the box / mask
heads and everything after them stay float32 (their outputs feed thresholds, NMS and box decoding, where int8
rounding changes which boxes survive more than in the features).
"""
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

from ..data.folders import IMG_EXTENSIONS
from ..io.outputs import write_bytes_atomic
from ..utils.errors import DeployError
from .load import MAX_SIDE, METADATA, MIN_SIDE

DEFAULT_CALIB_IMAGES = 32
BACKBONE_PREFIX = "backbone."  # ExportableDetector.backbone: the ResNet body and the FPN


class CalibrationError(DeployError):
    """The calibration source cannot be used (missing, empty, unreadable); one line naming the path."""


def calibration_images(source, limit: int = DEFAULT_CALIB_IMAGES) -> List[Path]:
    """The first `limit` (>= 1) image files of `source`: a folder (its images, sorted by name, not recursive) or a
    COCO json (its "images" in order, file_name resolved beside the json or in its images/ folder).
    CalibrationError (one line naming the path) when missing, empty or unreadable."""
    if limit < 1:
        raise CalibrationError(f"--calib-images must be at least 1, got {limit}")
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                       and not p.name.startswith("."))
        if not found:
            raise CalibrationError(f"--calib folder {source} holds no images ({', '.join(IMG_EXTENSIONS[:3])}, ...)")
        return found[:limit]
    if not source.is_file():
        raise CalibrationError(f"--calib not found: {source} (a folder of images or a COCO json)")
    return _coco_images(source, limit)


def _coco_images(source: Path, limit: int) -> List[Path]:
    import json

    try:
        records = json.loads(source.read_text(encoding="utf-8"))["images"]
        names = [str(r["file_name"]) for r in records]
    except (OSError, UnicodeError, ValueError, KeyError, TypeError) as error:
        raise CalibrationError(f"--calib {source}: not a COCO json with images[].file_name "
                               f"({type(error).__name__})") from None
    if not names:
        raise CalibrationError(f"--calib {source}: its images list is empty")
    for root in (source.parent, source.parent / "images"):
        if (root / names[0]).is_file():
            return [root / name for name in names[:limit]]
    raise CalibrationError(f"--calib {source}: its first image {names[0]} is neither beside it nor in "
                           f"{source.parent / 'images'}")


def read_calibration_image(path) -> np.ndarray:
    """One calibration input as the exported file takes it: float32 RGB [3, H, W] in [0, 1] (deploy.load's
    interface). CalibrationError (one line naming the file) when it does not decode or its size is out of range."""
    from ..data.images import read_image

    try:
        image = read_image(path)
    except (OSError, ValueError) as error:
        raise CalibrationError(f"--calib image {path} cannot be read: {str(error).splitlines()[0]}") from None
    if not (MIN_SIDE <= min(image.shape[:2]) and max(image.shape[:2]) <= MAX_SIDE):
        raise CalibrationError(f"--calib image {path}: {image.shape[0]}x{image.shape[1]} pixels, outside the "
                               f"exported range of {MIN_SIDE} to {MAX_SIDE} per side")
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def _reader(input_name: str, images: Sequence[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # one image per run, as the file is called (any H, W)
        def __init__(self):
            self._items: Iterator = iter(images)

        def get_next(self):
            image = next(self._items, None)
            return None if image is None else {input_name: image}

        def rewind(self):
            self._items = iter(images)
    return Reader()


def backbone_convs(model) -> List[str]:
    """Names of the Conv nodes of an exported detector's backbone + FPN (weight initializer "backbone.*"); the
    nodes onnxruntime quantizes."""
    return [node.name for node in model.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].startswith(BACKBONE_PREFIX)]


def quantize_onnx(source, path, calib: Sequence, *, per_channel: bool = True, reduce_range: bool = False) -> Path:
    """The float32 detector file `source` (.onnx written by export_detector) with its backbone + FPN convolutions in
    int8, written to `path` atomically (io.outputs); returns the path. calib: image files, or float32 arrays
    [3, H, W] RGB in [0, 1], run through the file one at a time to calibrate the activation ranges (MinMax).
    The inputs, outputs, dynamic H/W and METADATA (label names, label_to_category, ...) are the source's."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = [c if isinstance(c, np.ndarray) else read_calibration_image(c) for c in calib]
    if not images:
        raise CalibrationError("no calibration images")
    original = onnx.load(str(source))
    meta = {p.key: p.value for p in original.metadata_props}
    if METADATA not in meta:
        raise ValueError(f"{source}: not a detector exported by resbackbones (no {METADATA} metadata)")
    with tempfile.TemporaryDirectory(prefix="resbackbones-int8-") as folder:
        # onnxruntime's basic graph optimisation first (constant folding; BatchNorm folded into the convolution,
        # whose weights are then quantized once); no symbolic shape inference, which the dynamic NMS graph defeats.
        ready = Path(folder) / "ready.onnx"
        quant_pre_process(str(source), str(ready), skip_symbolic_shape=True)
        convs = backbone_convs(onnx.load(str(ready), load_external_data=False))
        if not convs:
            raise ValueError(f"{source}: no backbone convolution found to quantize")
        target = Path(folder) / "int8.onnx"
        quantize_static(str(ready), str(target), _reader(original.graph.input[0].name, images),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], nodes_to_quantize=convs,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        quantized = onnx.load(str(target))
    onnx.helper.set_model_props(quantized, meta)
    onnx.checker.check_model(quantized)
    return write_bytes_atomic(Path(path), quantized.SerializeToString())


def quantized_convs(path) -> int:
    """How many Conv nodes of an ONNX file take a DequantizeLinear weight (the int8 ones)."""
    import onnx

    model = onnx.load(str(path))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in dequantized)


def describe_quantized(path) -> Optional[str]:
    """'int8: N of M convolutions' for an ONNX file, None when nothing is quantized."""
    import onnx

    model = onnx.load(str(path))
    total = sum(1 for n in model.graph.node if n.op_type == "Conv")
    count = quantized_convs(path)
    return f"int8: {count} of {total} convolutions" if count else None


def export_int8(model, path, calib: Sequence, *, label_names: Optional[Sequence[str]] = None, example=None,
                metadata: Optional[dict] = None) -> Path:
    """`model` (a build_detector detector) exported to ONNX (export.write_exported, float32, in a temporary folder)
    and written to `path` with its backbone + FPN in int8 (quantize_onnx, calibrated on `calib`: image files or
    float32 arrays [3, H, W] RGB in [0, 1]); returns the path. Only `path` is written (atomically)."""
    from .export import write_exported

    with tempfile.TemporaryDirectory(prefix="resbackbones-fp32-") as folder:
        fp32 = Path(folder) / "fp32.onnx"
        write_exported(model, {"onnx": fp32}, label_names=label_names, example=example, metadata=metadata)
        return quantize_onnx(fp32, path, calib)
