#!/usr/bin/env bash
# The GPU check of issue 14, in at most 8 minutes on one GPU, ending in ONE table (benchmarks/gpu_report.py):
#   1. the CUDA tests (tests/test_cuda.py: device / AMP choice, RoIAlign's CUDA fallback, detection and
#      classification steps under CUDA autocast, the fast inference path, train_cls / train_det on cuda);
#   2. benchmarks/mixed_precision.py --device cuda: Mask R-CNN R50-FPN train step / inference and ResNet-50 224 px
#      training (step and ClsTrainer epoch) and inference, ours at amp=auto (bf16 on compute capability >= 8.0)
#      + channels_last vs torchvision's plain fp32;
#   3. ours vs detectron2 (benchmarks/detectron2_vs_ours.py), only where detectron2 is importable;
#   4. amp=auto vs fp32 train step of the bf16 study's quickstart detector (benchmarks/bf16_speed.py, issue 24:
#      the share of bf16's speed-up that auto keeps), if time is left;
#   5. the four CIFAR degradation nets, alone and side by side (benchmarks/cifar_nets.py), if time is left.
# Each step has its own time limit, so a hung step costs its share only. Logs and gpu_table.md go to $OUT when set
# (the device tool brings them back), else /tmp/gpu_check. Wheels in .whl/ (benchmarks/gpu_wheels.sh) are installed
# first with pip --no-index --target: the GPU machine has no internet.
# Without a GPU this is a dry run: it says "no GPU", lists what it would run and exits 0 (tests/test_gpu_check.py).
#
#     bash benchmarks/gpu_check.sh                  # PYTHON=... to choose the interpreter (default python3)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # seconds for everything; the device run's limit is set above it
START=$SECONDS
export PYTHONUNBUFFERED=1

STEPS="  1. tests:           $PY -m pytest -q -rs tests/test_cuda.py                         (limit 150 s)
  2. mixed precision: $PY benchmarks/mixed_precision.py --device cuda --batch 128 --cls-archs resnet50
                      --infer-archs resnet50 --cls-epochs --cls-iters 10 --workers 12 --repeats 3 (limit 200 s)
  3. detectron2:      $PY benchmarks/detectron2_vs_ours.py --device cuda (only if importable, limit 60 s)
  4. bf16 speed:      $PY benchmarks/bf16_speed.py --device cuda --datasets quickstart --steps 20
                      --out \$LOGS/bf16_speed.md                                   (if >= 160 s left, limit 60 s)
  5. CIFAR nets:      $PY benchmarks/cifar_nets.py --device cuda --seconds 6              (if >= 100 s left)
  then $PY benchmarks/gpu_report.py $LOGS: one table"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no GPU: dry run (torch.cuda.is_available() is false or torch is missing for $PY)."
  echo "On a CUDA machine this script would run, writing logs to $LOGS:"
  echo "$STEPS"
  exit 0
fi

mkdir -p "$LOGS"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "warning: installing .whl/ failed; parts that need albumentations / pycocotools will fail"
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "warning: no .whl/ (bash benchmarks/gpu_wheels.sh); parts that need albumentations / pycocotools may fail"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" benchmarks/machine.py > "$LOGS/machine.txt" 2>&1
cat "$LOGS/machine.txt"

left() { echo $(( BUDGET - (SECONDS - START) )); }
run_step() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  if (( limit > $(left) )); then limit=$(left); fi
  if (( limit < 20 )); then echo "[gpu_check] $name: skipped, no time left" | tee "$LOGS/$name.txt"; return; fi
  echo "[gpu_check] $name (limit ${limit} s): $*"
  timeout -k 5 "$limit" "$@" > "$LOGS/$name.txt" 2>&1
  local code=$?
  (( code == 124 )) && echo "[gpu_check] $name: timed out after $limit s" >> "$LOGS/$name.txt"
  echo "[gpu_check] $name: exit $code after $(( SECONDS - START )) s in all"
}

run_step tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
run_step mixed_precision 200 "$PY" benchmarks/mixed_precision.py --device cuda --batch 128 --cls-archs resnet50 \
  --infer-archs resnet50 --cls-epochs --cls-iters 10 --workers 12 --repeats 3
if "$PY" -c "import detectron2" 2>/dev/null; then
  run_step detectron2 60 "$PY" benchmarks/detectron2_vs_ours.py --device cuda --coco tests/fixtures/coco_sample \
    --images 2 --repeats 3
else
  echo "skipped: detectron2 is not importable on this machine" > "$LOGS/detectron2.txt"
fi
if (( $(left) >= 160 )); then
  run_step bf16_speed 60 "$PY" benchmarks/bf16_speed.py --device cuda --datasets quickstart --steps 20 \
    --out "$LOGS/bf16_speed.md"
else
  echo "[gpu_check] bf16_speed: skipped, $(left) s left" | tee "$LOGS/bf16_speed.txt"
fi
if (( $(left) >= 100 )); then
  run_step cifar_nets 90 "$PY" benchmarks/cifar_nets.py --device cuda --seconds 6
else
  echo "[gpu_check] cifar_nets: skipped, $(left) s left" | tee "$LOGS/cifar_nets.txt"
fi
"$PY" benchmarks/gpu_report.py "$LOGS" --seconds $(( SECONDS - START ))
