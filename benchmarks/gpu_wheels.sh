#!/usr/bin/env bash
# Download, on this machine, the wheels that benchmarks/gpu_check.sh installs on the GPU machine, which has python
# 3.12 with torch, torchvision, numpy, opencv-python-headless, safetensors, pyyaml, tqdm, matplotlib and pytest, but
# no internet: albumentations (the classification data pipeline) with what it needs, and pycocotools (COCO
# evaluation). Versions are the ones this project's .venv is tested with. They land in .whl/ (git-ignored), which the
# device tool's run carries (carry=[".whl"], see benchmarks/README.md). The command is the one of the device README.
#
#     bash benchmarks/gpu_wheels.sh            # ~10 MB into .whl/; PYTHON=... to use another pip
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2 pycocotools==2.0.11
)
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
