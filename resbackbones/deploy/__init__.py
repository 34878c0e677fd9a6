"""Using a trained detector outside training: load it back (load_detector, which lives in evaluation/inference.py),
export it whole for deployment (export_detector: TorchScript .pt, torch.export .pt2, ONNX .onnx), run an exported
file with the eager interface (load), prediction helpers for tools/predict.py."""
from ..evaluation.inference import LoadedDetector, load_detector  # noqa: F401
from .export import FORMATS, DeployError, export_detector, max_differences  # noqa: F401
from .load import ExportedDetector, check_images, load  # noqa: F401
from .scriptable import deployable  # noqa: F401
