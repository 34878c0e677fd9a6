#!/usr/bin/env bash
# Degradation experiment (He et al. 2015, Fig. 6 / Table 6): plain-20, plain-56, ResNet-20, ResNet-56 on CIFAR-10
# with tools/train_cls.py and one protocol for the four (configs/cifar_cpu_base.yaml), then each final model is
# published (publish.py: results/checkpoints/<model>.safetensors, evaluated in eval mode on all train and test
# images) and the table and curves are written.
#
#   bash projects/degradation/run.sh                       # all four, then results/summary.csv + results/*.png
#   CIFAR10=/path/to/cifar10 bash projects/degradation/run.sh
#
# Interrupted? Run it again: a finished model is skipped, an unfinished one continues from its last checkpoint
# (tools/train_cls.py --resume). Environment (all optional):
#   CIFAR10           CIFAR-10 folder with train/ and test/ (folders or .tar)  [../shared/data/cifar10 next to the repo]
#   DEG_RUNS          where the runs are written (git-ignored)                  [projects/degradation/runs]
#   DEG_RESULTS       where summary.csv and the PNGs are written                [projects/degradation/results]
#   DEG_MODELS        subset of "plain20 plain56 resnet20 resnet56"
#   DEG_PROTOCOL      "paper": the paper's full schedule (configs/paper/, 64k iterations; a GPU job)  [CPU protocol]
#   DEG_EPOCHS        epochs per run                                            [config: 20]
#   DEG_TRAIN_SUBSET  train images per epoch                                    [config: all 50,000]
#   DEG_VAL_SUBSET    test images evaluated after each epoch                    [config: all 10,000]
#   DEG_BATCH         batch size (lr stays 0.1)                                 [config: 128]
#   DEG_THREADS       torch CPU threads                                         [config: torch's default]
#   PYTHON            interpreter                                                [.venv/bin/python if present]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=../_common.sh
source "$HERE/../_common.sh"   # rb_python, rb_train_each (the resume/DONE-marker loop)
PY="$(rb_python "$ROOT")"
CIFAR10="${CIFAR10:-$ROOT/../shared/data/cifar10}"
RUNS="${DEG_RUNS:-$HERE/runs${DEG_PROTOCOL:+/$DEG_PROTOCOL}}"
RESULTS="${DEG_RESULTS:-$HERE/results${DEG_PROTOCOL:+/$DEG_PROTOCOL}}"
MODELS="${DEG_MODELS:-plain20 plain56 resnet20 resnet56}"

if [[ ! -e "$CIFAR10" ]]; then
  echo "error: CIFAR-10 folder '$CIFAR10' not found; set CIFAR10=/path/to/cifar10 (train/ and test/, folders or .tar)" >&2
  exit 2
fi

extra=()
[[ -n "${DEG_EPOCHS:-}" ]] && extra+=(--epochs "$DEG_EPOCHS")
[[ -n "${DEG_BATCH:-}" ]] && extra+=(--batch-size "$DEG_BATCH")
[[ -n "${DEG_TRAIN_SUBSET:-}" ]] && extra+=("data.train_subset=$DEG_TRAIN_SUBSET")
[[ -n "${DEG_VAL_SUBSET:-}" ]] && extra+=("data.val_subset=$DEG_VAL_SUBSET")
[[ -n "${DEG_THREADS:-}" ]] && extra+=("train.num_threads=$DEG_THREADS")

CONFIGS="$HERE/configs${DEG_PROTOCOL:+/$DEG_PROTOCOL}"
if [[ ! -f "$CONFIGS/cifar_resnet20.yaml" ]]; then
  echo "error: DEG_PROTOCOL='${DEG_PROTOCOL:-}' has no configs in $CONFIGS (use 'paper' or leave it unset)" >&2
  exit 2
fi

train_one() {  # train_one MODEL OUT
  "$PY" tools/train_cls.py --config "$CONFIGS/cifar_$1.yaml" --data "$CIFAR10" --output "$2" \
    ${RB_RESUME[@]+"${RB_RESUME[@]}"} ${extra[@]+"${extra[@]}"}
}
# shellcheck disable=SC2086  # MODELS is a word list
rb_train_each "$RUNS" checkpoints/last.pt seconds train_one $MODELS

for model in $MODELS; do  # publish each final model once (again when its run has a newer checkpoint)
  published="$RESULTS/checkpoints/$model.safetensors"
  if [[ ! -f "$published" || "$RUNS/$model/checkpoints/last.pt" -nt "$published" ]]; then
    "$PY" "$HERE/publish.py" --run "$RUNS/$model" --out "$published" --data "$CIFAR10"
  fi
  mkdir -p "$RESULTS/logs/$model"   # the small per-epoch record beside the weights, committed with them
  cp "$RUNS/$model/metrics.csv" "$RUNS/$model/config.yaml" "$RESULTS/logs/$model/"
done

"$PY" "$HERE/summarize.py" --runs "$RUNS" --results "$RESULTS" --models $MODELS
