#!/usr/bin/env bash
# Transfer study (issue 13): classification pretraining on CIFAR-10 (tools/train_cls.py) -> backbone export ->
# detector fine-tuning (tools/train_det.py) on BCCD (Faster R-CNN) and DSB2018 nuclei (Mask R-CNN), each against the
# same detector trained from scratch with the same budget; then results/summary.csv, results/ap_bars.png and the
# README tables (summarize.py).
#
#   bash projects/transfer/run.sh                 # the CPU study, one process after the other
#   TR_JOBS=2 bash projects/transfer/run.sh       # two chains side by side, one thread each (see README: budget)
#
# Interrupted? Run it again: a finished step (DONE file) is skipped, an unfinished one continues from its checkpoint
# (train_cls / train_det --resume). Steps, in order, with their run folders under TR_RUNS:
#   pretrain/<backbone>/                 train_cls, then backbone.safetensors (the --export, with its metadata)
#   <dataset>/<backbone>_<init>/         train_det, init "pretrained" (the export) or "scratch" (GN, random)
# Environment (all optional):
#   CIFAR10 / BCCD / DSB   data folders            [../shared/data/{cifar10,bccd,dsb2018_nuclei} next to the repo]
#   TR_RUNS, TR_RESULTS    run / result folders    [projects/transfer/runs (git-ignored), projects/transfer/results]
#   TR_BACKBONES           pretrained, and fine-tuned on BCCD                           ["vgg16 resnet50 resnet101"]
#   TR_DSB_BACKBONES       fine-tuned on DSB2018 nuclei (each needs its pretraining)    ["resnet50"]
#   TR_DATASETS            subset of "bccd dsb"      TR_INITS  subset of "pretrained scratch"
#   TR_PX                  pretraining input size (CIFAR's 32 px upsampled)              [config: 48]
#   TR_EPOCHS              pretraining epochs (the same for every backbone)             [config: 10]
#   TR_BATCH               pretraining batch (lr 0.05 at 128, scaled linearly)          [config: 128]
#   TR_TRAIN_SUBSET        pretraining images per epoch (fixed random subset)           [all 50,000]
#   TR_VAL_SUBSET          test images for the pretraining's final top-1                [all 10,000]
#   TR_DET_ITERS           fine-tune iterations of 2 images (lr /10 at 80 %)            [config: 1000]
#   TR_DET_TRAIN_LIMIT     first N train images only (0 = all)   TR_DET_VAL_LIMIT  first N val images (0 = all)
#   TR_BCCD_MIN_SIZE       BCCD input shorter side [config: 160]  TR_DSB_MIN_SIZE  DSB shorter side [config: 256]
#   TR_THREADS             torch threads per process                                    [1]
#   TR_DEVICE              cpu, cuda, cuda:N                                            [auto]
#   TR_WORKERS             data loader processes (GPU: 8 or more)                       [config: 1 / 0]
#   TR_JOBS                1, or 2: the first of TR_BACKBONES in one chain, the others in a second one  [1]
#   PYTHON                 interpreter                                                  [.venv/bin/python if present]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../_common.sh
source "$HERE/../_common.sh"   # rb_python, rb_train_each (the resume/DONE-marker loop)
PY="$(rb_python "$ROOT")"
DATA="$ROOT/../shared/data"
CIFAR10="${CIFAR10:-$DATA/cifar10}"
BCCD="${BCCD:-$DATA/bccd}"
DSB="${DSB:-$DATA/dsb2018_nuclei}"
RUNS="${TR_RUNS:-$HERE/runs}"
RESULTS="${TR_RESULTS:-$HERE/results}"
BACKBONES="${TR_BACKBONES:-vgg16 resnet50 resnet101}"
DSB_BACKBONES="${TR_DSB_BACKBONES-resnet50}"   # set but empty: no DSB fine-tunes
DATASETS="${TR_DATASETS:-bccd dsb}"
INITS="${TR_INITS:-pretrained scratch}"
THREADS="${TR_THREADS:-1}"
JOBS="${TR_JOBS:-1}"
CONFIGS="$HERE/configs"

fail() { echo "error: $*" >&2; exit 2; }
in_list() { [[ " $2 " == *" $1 "* ]]; }

# -- checks: every name and folder before any training -----------------------------------------------------------
for d in $DATASETS; do in_list "$d" "bccd dsb" || fail "TR_DATASETS: unknown dataset '$d'; choose from: bccd dsb"; done
for i in $INITS; do in_list "$i" "pretrained scratch" || fail "TR_INITS: unknown init '$i'; choose from: pretrained scratch"; done
for b in $BACKBONES; do [[ -f "$CONFIGS/pretrain_$b.yaml" ]] || fail "TR_BACKBONES: no configs/pretrain_$b.yaml for '$b'; choose from: vgg16 resnet50 resnet101"; done
if in_list dsb "$DATASETS"; then
  for b in $DSB_BACKBONES; do
    [[ -f "$CONFIGS/dsb_$b.yaml" ]] || fail "TR_DSB_BACKBONES: no configs/dsb_$b.yaml for '$b'"
    in_list pretrained "$INITS" && ! in_list "$b" "$BACKBONES" && fail "TR_DSB_BACKBONES: '$b' is fine-tuned pretrained but not pretrained (add it to TR_BACKBONES)"
  done
fi
[[ "$JOBS" == 1 || "$JOBS" == 2 ]] || fail "TR_JOBS must be 1 or 2, got '$JOBS'"
read -r first rest <<< "$BACKBONES"
[[ "$JOBS" == 1 || -n "${rest:-}" ]] || fail "TR_JOBS=2 needs at least two TR_BACKBONES, got '$BACKBONES'"
for knob in TR_PX TR_EPOCHS TR_BATCH TR_TRAIN_SUBSET TR_VAL_SUBSET TR_DET_ITERS TR_DET_TRAIN_LIMIT TR_DET_VAL_LIMIT \
            TR_BCCD_MIN_SIZE TR_DSB_MIN_SIZE TR_THREADS TR_WORKERS; do
  value="${!knob:-}"
  [[ -z "$value" || "$value" =~ ^[0-9]+$ ]] || fail "$knob must be a whole number, got '$value'"
done
need_data() {  # need_data VAR FOLDER FILE...
  local var="$1" folder="$2"; shift 2
  for f in "$@"; do [[ -e "$folder/$f" ]] || fail "'$folder/$f' not found; set $var=/path/to/the/folder"; done
}
if in_list pretrained "$INITS"; then  # train/ and test/ (or val/), folders or .tar
  for split in train test; do
    [[ -e "$CIFAR10/$split" || -e "$CIFAR10/$split.tar" || ( $split == test && ( -e "$CIFAR10/val" || -e "$CIFAR10/val.tar" ) ) ]] ||
      fail "'$CIFAR10/$split' (folder or .tar) not found; set CIFAR10=/path/to/cifar10"
  done
fi
in_list bccd "$DATASETS" && need_data BCCD "$BCCD" train.json val.json images
in_list dsb "$DATASETS" && need_data DSB "$DSB" train.json val.json images

# -- two chains: the first backbone alone, the others together; each chain runs this script for its backbones ----
if [[ "$JOBS" == 2 ]]; then
  first_dsb=""; rest_dsb=""
  for b in $DSB_BACKBONES; do if [[ "$b" == "$first" ]]; then first_dsb="$b"; else rest_dsb="$rest_dsb $b"; fi; done
  mkdir -p "$RUNS"
  echo "== two chains: '$first' (log $RUNS/chain_$first.log) and '$rest'"
  TR_JOBS=1 TR_BACKBONES="$first" TR_DSB_BACKBONES="$first_dsb" TR_SUMMARY=0 bash "$HERE/run.sh" \
    > "$RUNS/chain_$first.log" 2>&1 &
  other=$!
  trap 'kill "$other" 2>/dev/null || true' INT TERM   # stopping this script stops both chains (both resume later)
  status=0
  TR_JOBS=1 TR_BACKBONES="$rest" TR_DSB_BACKBONES="${rest_dsb# }" TR_SUMMARY=0 bash "$HERE/run.sh" || status=$?
  wait "$other" || { echo "error: the '$first' chain failed; see $RUNS/chain_$first.log" >&2; status=1; }
  [[ "$status" == 0 ]] || exit "$status"
  exec "$PY" "$HERE/summarize.py" --runs "$RUNS" --results "$RESULTS" --readme-if-default
fi

# -- 1. pretraining + export ---------------------------------------------------------------------------------------
pre_extra=(--data "$CIFAR10" "train.num_threads=$THREADS")
[[ -n "${TR_PX:-}" ]] && pre_extra+=("data.crop_size=$TR_PX" "data.resize_size=$TR_PX")
[[ -n "${TR_EPOCHS:-}" ]] && pre_extra+=(--epochs "$TR_EPOCHS")
[[ -n "${TR_BATCH:-}" ]] && pre_extra+=(--batch-size "$TR_BATCH")
[[ -n "${TR_TRAIN_SUBSET:-}" ]] && pre_extra+=("data.train_subset=$TR_TRAIN_SUBSET")
[[ -n "${TR_VAL_SUBSET:-}" ]] && pre_extra+=("data.val_subset=$TR_VAL_SUBSET")
[[ -n "${TR_DEVICE:-}" ]] && pre_extra+=(--device "$TR_DEVICE")
[[ -n "${TR_WORKERS:-}" ]] && pre_extra+=(--workers "$TR_WORKERS")
export_of() { echo "$RUNS/pretrain/$1/backbone.safetensors"; }

pretrain_one() {  # pretrain_one BACKBONE OUT: train (or continue), then export with the final top-1
  "$PY" tools/train_cls.py --config "$CONFIGS/pretrain_$1.yaml" --output "$2" --export "$(export_of "$1")" \
    ${RB_RESUME[@]+"${RB_RESUME[@]}"} "${pre_extra[@]}"
}
if in_list pretrained "$INITS"; then
  # shellcheck disable=SC2086  # BACKBONES is a word list
  rb_train_each "$RUNS/pretrain" checkpoints/last.pt seconds pretrain_one $BACKBONES
  for b in $BACKBONES; do  # a finished run whose export went missing: export its last checkpoint again
    if [[ ! -f "$(export_of "$b")" ]]; then
      "$PY" tools/train_cls.py --config "$CONFIGS/pretrain_$b.yaml" --output "$RUNS/pretrain/$b" --resume \
        --eval-only --export "$(export_of "$b")" "${pre_extra[@]}"
    fi
  done
fi

# -- 2. fine-tuning: one detector and budget per dataset, pretrained vs scratch --------------------------------------
det_extra=("train.num_threads=$THREADS")
if [[ -n "${TR_DET_ITERS:-}" ]]; then  # the schedule keeps its shape: lr /10 at 80 %, warm-up <= 50 iterations
  iters="$TR_DET_ITERS"; steps=$(( iters * 4 / 5 ))
  det_extra+=("solver.max_iter=$iters" "solver.steps=[$(( steps > 0 ? steps : 1 ))]"
              "solver.warmup=$(( iters < 100 ? iters / 2 : 50 ))" "train.checkpoint_period=$(( iters < 50 ? iters : 50 ))")
fi
[[ -n "${TR_DET_TRAIN_LIMIT:-}" ]] && det_extra+=("data.train.limit=$TR_DET_TRAIN_LIMIT")
[[ -n "${TR_DET_VAL_LIMIT:-}" ]] && det_extra+=("test.max_images=$TR_DET_VAL_LIMIT")
[[ -n "${TR_DEVICE:-}" ]] && det_extra+=("train.device=$TR_DEVICE")
[[ -n "${TR_WORKERS:-}" ]] && det_extra+=("data.num_workers=$TR_WORKERS")

finetune_one() {  # finetune_one BACKBONE_INIT OUT   (uses $dataset, $data_dir, $min_size)
  local backbone="${1%_*}" init="${1##*_}" init_args
  if [[ "$init" == pretrained ]]; then
    # FrozenBN statistics from pretraining (VGG-16 has no norm), stem + first stage frozen, as detectron2 fine-tunes
    local norm=FrozenBN; [[ "$backbone" == vgg* && "$backbone" != *_bn ]] && norm=none
    init_args=("model.backbone.weights=$(export_of "$backbone")" "model.backbone.norm=$norm" "model.backbone.freeze_at=2")
  else
    init_args=("model.backbone.weights=''" "model.backbone.norm=GN" "model.backbone.freeze_at=0")
  fi
  local size=()
  [[ -n "$min_size" ]] && size=("model.input.min_size=[$min_size]" "model.input.max_size=$(( min_size * 7 / 5 ))")
  "$PY" tools/train_det.py --config "$CONFIGS/${dataset}_$backbone.yaml" --output "$2" \
    ${RB_RESUME[@]+"${RB_RESUME[@]}"} "data.train.ann_file=$data_dir/train.json" "data.train.image_root=$data_dir/images" \
    "data.val.ann_file=$data_dir/val.json" "data.val.image_root=$data_dir/images" \
    "${init_args[@]}" "${det_extra[@]}" ${size[@]+"${size[@]}"}
}
for dataset in $DATASETS; do
  case "$dataset" in
    bccd) data_dir="$BCCD"; min_size="${TR_BCCD_MIN_SIZE:-}"; backbones="$BACKBONES" ;;
    dsb) data_dir="$DSB"; min_size="${TR_DSB_MIN_SIZE:-}"; backbones="$DSB_BACKBONES" ;;
  esac
  names=()
  for b in $backbones; do for i in $INITS; do names+=("${b}_$i"); done; done
  (( ${#names[@]} )) && rb_train_each "$RUNS/$dataset" checkpoints/last.pt seconds finetune_one "${names[@]}"
done

# -- 3. the table, the figure and the README tables -------------------------------------------------------------------
if [[ "${TR_SUMMARY:-1}" == 1 ]]; then
  "$PY" "$HERE/summarize.py" --runs "$RUNS" --results "$RESULTS" --readme-if-default
fi
