"""resbackbones: exact ResNet backbones for detection and segmentation."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

CORE = [
    "torch>=2.4,<=2.14.1",
    "torchvision>=0.19,<=0.29.1",
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "albumentations>=1.4,<3",
    "safetensors>=0.4",
    "pyyaml>=6.0",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    # Intel ISA-L's crc32: the checkpoint check (weights/integrity.py) at ~3x zlib's speed; zlib is the fallback
    "isal>=1.6",
]
EXTRAS = {
    # pycocotools is the reference COCO evaluator; faster-coco-eval is used only where its stats are identical.
    "coco": ["pycocotools>=2.0.7", "faster-coco-eval>=1.6"],
    "tensorboard": ["tensorboard>=2.14"],
    # detectron2 has no usable PyPI release: this is upstream at the commit we test against.
    "detectron2": [
        "detectron2 @ git+https://github.com/facebookresearch/detectron2.git@02b5c4e295e990042a714712c21dc79b731e8833"
    ],
    # leaving Python: ONNX files checked with onnx.checker and run in onnxruntime (the dynamo exporter needs onnxscript)
    "deploy": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
    # scipy: the t quantiles of benchmarks/bf16_accuracy.py --table (albumentations already pulls it in)
    "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "pytest-xdist>=3.5", "hypothesis>=6.100", "scipy>=1.10"],
    "docs": ["mkdocs>=1.6,<2", "mkdocstrings[python]>=0.26"],
}
EXTRAS["all"] = EXTRAS["coco"] + EXTRAS["tensorboard"]
EXTRAS["dev"] = EXTRAS["dev"] + EXTRAS["all"] + EXTRAS["deploy"] + EXTRAS["docs"]

setup(
    name="resbackbones",
    version="0.1.0",
    description="Exact ResNet / plain / CIFAR / VGG backbones with FPN, Faster/Mask R-CNN and COCO evaluation",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["resbackbones", "resbackbones.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
