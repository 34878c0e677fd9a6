"""Using a trained detector outside training: load it back (load_detector, which lives in evaluation/inference.py),
export it whole for deployment (export_detector: TorchScript, or ONNX with the onnx package), prediction helpers
for tools/predict.py."""
from ..evaluation.inference import LoadedDetector, load_detector  # noqa: F401
from .export import FORMATS, DeployError, export_detector, max_differences  # noqa: F401
from .scriptable import deployable  # noqa: F401
