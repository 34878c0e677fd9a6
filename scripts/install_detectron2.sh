#!/usr/bin/env bash
# Install detectron2 (upstream commit 02b5c4e2, Apache-2.0) into a Python environment from the
# vendored source archive, building the wheel only once per torch version.
#
# Usage:
#   scripts/install_detectron2.sh [PYTHON [ARCHIVE]]   # PYTHON defaults to $PYTHON, then `python`
# Environment:
#   DETECTRON2_ARCHIVE    source archive when ARCHIVE is not given (then RESBACKBONES_D2_ARCHIVE, then
#                         <repo>/../shared/vendor/detectron2-02b5c4e2.tar.gz)
#   RESBACKBONES_CACHE    wheel cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/resbackbones)
#   MAX_JOBS              parallel compile jobs (default: 2)
#
# What it does:
#   1. if `import detectron2, detectron2._C, detectron2.model_zoo` already works in PYTHON: nothing;
#   2. else, if no wheel is cached under $RESBACKBONES_CACHE/wheels/torch-<torch version>/<archive name>/,
#      builds one there (`pip wheel --no-build-isolation --no-deps`, since detectron2's setup.py imports torch);
#   3. pip-installs the cached wheel (its pure-python deps such as fvcore/iopath/omegaconf come from PyPI).
# Exit status: 0 when detectron2 imports afterwards; 2 when the archive is missing; else pip's failure.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${PYTHON:-python}}"
archive="${2:-${DETECTRON2_ARCHIVE:-${RESBACKBONES_D2_ARCHIVE:-$repo_root/../shared/vendor/detectron2-02b5c4e2.tar.gz}}}"
cache_root="${RESBACKBONES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resbackbones}"

say() { echo "[install_detectron2] $*"; }

# model_zoo is part of the check because it needs pkg_resources (removed in setuptools >= 81).
check_import='import detectron2, detectron2._C, detectron2.model_zoo; print(detectron2.__file__)'
if where="$("$python" -W ignore -c "$check_import" 2>/dev/null)"; then
    say "detectron2 already importable in $python ($where); nothing to do"
    exit 0
fi

if [[ ! -f "$archive" ]]; then
    say "ERROR: detectron2 source archive not found: $archive (pass it as the 2nd argument or set DETECTRON2_ARCHIVE)" >&2
    exit 2
fi

torch_version="$("$python" -c 'import torch; print(torch.__version__)')"
wheel_dir="$cache_root/wheels/torch-$torch_version/$(basename "$archive" .tar.gz)"
mkdir -p "$wheel_dir"

# Build-time requirements: setuptools<81 keeps pkg_resources (model_zoo imports it at run time too).
say "ensuring setuptools<81 and ninja in $python"
"$python" -m pip install --quiet "setuptools<81" ninja

py_tag="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
wheel="$(ls "$wheel_dir"/detectron2-*-"$py_tag"-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -n "$wheel" ]]; then
    say "using cached wheel $wheel"
else
    say "building detectron2 wheel from $archive into $wheel_dir (torch $torch_version, MAX_JOBS=${MAX_JOBS:-2}; a few minutes)"
    start=$(date +%s)
    MAX_JOBS="${MAX_JOBS:-2}" "$python" -m pip wheel --no-build-isolation --no-deps -w "$wheel_dir" "$archive"
    wheel="$(ls "$wheel_dir"/detectron2-*-"$py_tag"-*.whl | head -n 1)"
    say "built $wheel in $(( $(date +%s) - start ))s"
fi

say "installing $wheel"
"$python" -m pip install --quiet "$wheel"
where="$("$python" -W ignore -c "$check_import")"
say "detectron2 installed: $where"
