# Shared by projects/*/run.sh (sourced, not run): the interpreter choice and the resume/DONE-marker loop.
#
#   source "$HERE/../_common.sh"
#   PY=$(rb_python "$ROOT")
#   train_one() { "$PY" tools/train_x.py ... --output "$2" ${RB_RESUME[@]+"${RB_RESUME[@]}"} ...; }
#   rb_train_each "$RUNS" checkpoints/last.pt seconds train_one $NAMES
#
# For each name, with out=RUNS/name: a finished run (out/DONE exists) is skipped; otherwise train_one NAME OUT
# runs with RB_RESUME=(--resume) when out/<checkpoint> exists or out is not empty (RB_RESUME=() when new), and
# out/DONE is written when it succeeds: the wall seconds of that session ("seconds") or the UTC finish time ("date").

# $PYTHON if set, else ROOT/.venv/bin/python if present, else python.
rb_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$1/.venv/bin/python" ]]; then
    echo "$1/.venv/bin/python"
  else
    echo python
  fi
}

# rb_train_each RUNS CHECKPOINT DONE_FORMAT TRAIN_FN NAME...
rb_train_each() {
  local runs="$1" checkpoint="$2" done_format="$3" train_fn="$4"
  shift 4
  local name out start
  for name in "$@"; do
    out="$runs/$name"
    if [[ -f "$out/DONE" ]]; then
      echo "== $name: already finished ($out/DONE); delete that file to retrain"
      continue
    fi
    RB_RESUME=()
    if [[ -f "$out/$checkpoint" ]]; then
      RB_RESUME=(--resume)
      echo "== $name: resuming from $out/$checkpoint"
    elif [[ -d "$out" && -n "$(ls -A "$out")" ]]; then
      RB_RESUME=(--resume)   # stopped before its first checkpoint: the tools refuse a non-empty folder without it
      echo "== $name: training (again: $out holds no checkpoint yet)"
    else
      echo "== $name: training"
    fi
    start=$(date +%s)
    "$train_fn" "$name" "$out"
    case "$done_format" in
      seconds) echo "$(( $(date +%s) - start ))" > "$out/DONE" ;;   # wall seconds of the last (resumed) session
      date) date -u +%FT%TZ > "$out/DONE" ;;
      *) echo "rb_train_each: unknown DONE format '$done_format'" >&2; return 2 ;;
    esac
  done
}
