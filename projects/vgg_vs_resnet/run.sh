#!/usr/bin/env bash
# VGG-16 vs ResNet-50 vs ResNet-101 Faster R-CNN backbones at CPU scale on BCCD (He et al. 2016, Tables 7-8 in
# miniature): trains each with tools/train_det.py at the same schedule, evaluates (COCO bbox AP on val), and writes
# results/summary.csv, results/details.csv and results/ap_bars.png.
#
#   bash projects/vgg_vs_resnet/run.sh
#   BCCD=/path/to/bccd bash projects/vgg_vs_resnet/run.sh        # any COCO-format set: train.json, val.json, images/
#
# Interrupted? Run it again: a finished backbone is skipped, an unfinished one continues from its checkpoints/last.pt
# (tools/train_det.py --resume). Environment (all optional):
#   BCCD              folder with train.json, val.json and images/             [../shared/data/bccd next to the repo]
#   VVR_RUNS          where the runs are written (git-ignored)                  [projects/vgg_vs_resnet/runs]
#   VVR_RESULTS       where summary.csv and ap_bars.png are written             [projects/vgg_vs_resnet/results]
#   VVR_BACKBONES     subset of "vgg16 resnet50 resnet101"
#   VVR_ITERS         training iterations (lr /10 at 80 %)                      [config: 100]
#   VVR_TRAIN_LIMIT   use only the first N train images (0 = all)               [0]
#   VVR_VAL_LIMIT     evaluate only the first N val images (0 = all)            [0 = all]
#   VVR_MIN_SIZE      input shorter side                                        [config: 128]
#   VVR_THREADS       torch CPU threads                                         [config: 1]
#   PYTHON            interpreter                                               [.venv/bin/python if present]
#   VVR_PROTOCOL      "pretrained": the same comparison with every backbone pretrained on CIFAR-10 the same way
#                     (projects/transfer/run.sh for BCCD, pretrained rows only; its TR_* knobs apply)  [from scratch]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../_common.sh
source "$HERE/../_common.sh"   # rb_python, rb_train_each (the resume/DONE-marker loop)
PY="$(rb_python "$ROOT")"
BCCD="${BCCD:-$ROOT/../shared/data/bccd}"
RUNS="${VVR_RUNS:-$HERE/runs}"
RESULTS="${VVR_RESULTS:-$HERE/results}"
BACKBONES="${VVR_BACKBONES:-vgg16 resnet50 resnet101}"

case "${VVR_PROTOCOL:-}" in
  "") ;;
  pretrained) TR_DATASETS=bccd TR_INITS=pretrained TR_BACKBONES="$BACKBONES" TR_DSB_BACKBONES="" \
                exec bash "$HERE/../transfer/run.sh" ;;
  *) echo "error: VVR_PROTOCOL='$VVR_PROTOCOL' is unknown; use 'pretrained' or leave it unset (from scratch)" >&2; exit 2 ;;
esac

for f in train.json val.json images; do
  if [[ ! -e "$BCCD/$f" ]]; then
    echo "error: '$BCCD/$f' not found; set BCCD=/path/to/bccd (a folder with train.json, val.json and images/)" >&2
    exit 2
  fi
done

extra=("data.train.ann_file=$BCCD/train.json" "data.train.image_root=$BCCD/images"
       "data.val.ann_file=$BCCD/val.json" "data.val.image_root=$BCCD/images")
if [[ -n "${VVR_ITERS:-}" ]]; then
  steps=$(( VVR_ITERS * 4 / 5 )); warm=$(( VVR_ITERS < 30 ? VVR_ITERS / 2 : 30 ))
  extra+=("solver.max_iter=$VVR_ITERS" "solver.steps=[$steps]" "solver.warmup=$warm"
          "train.checkpoint_period=$(( VVR_ITERS < 20 ? VVR_ITERS : 20 ))")
fi
[[ -n "${VVR_TRAIN_LIMIT:-}" ]] && extra+=("data.train.limit=$VVR_TRAIN_LIMIT")
[[ -n "${VVR_VAL_LIMIT:-}" ]] && extra+=("test.max_images=$VVR_VAL_LIMIT")
[[ -n "${VVR_MIN_SIZE:-}" ]] && extra+=("model.input.min_size=[$VVR_MIN_SIZE]" "model.input.max_size=$(( VVR_MIN_SIZE * 7 / 5 ))")
[[ -n "${VVR_THREADS:-}" ]] && extra+=("train.num_threads=$VVR_THREADS")

train_one() {  # train_one BACKBONE OUT
  "$PY" tools/train_det.py --config "$HERE/configs/bccd_$1.yaml" --output "$2" \
    ${RB_RESUME[@]+"${RB_RESUME[@]}"} "${extra[@]}"
}
# shellcheck disable=SC2086  # BACKBONES is a word list
rb_train_each "$RUNS" checkpoints/last.pt date train_one $BACKBONES

"$PY" "$HERE/summarize.py" --runs "$RUNS" --results "$RESULTS" --backbones $BACKBONES
