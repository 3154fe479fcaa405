#!/usr/bin/env bash
# Trains the offline default pair — drafter (configs/offline/train_drafter.gin)
# and verifier (configs/offline/train_verifier.gin) — side by side, each pinned to
# one CPU core, in the background. Re-running the script resumes both from their
# latest checkpoints (a finished run only re-exports), so an interrupted pair is
# continued by running the same command again.
#
#   bash scripts/train_offline_pair.sh [OUT_DIR] [extra --gin.X=V flags for both]
#   bash scripts/train_offline_pair.sh --wait        # ... and wait for both to finish
#   bash scripts/train_offline_pair.sh --status      # progress of both runs
#   bash scripts/train_offline_pair.sh --stop        # stop both (resumable later)
#
# OUT_DIR defaults to $SPEC_CASCADE_RUNS or runs/offline. Each model writes
# OUT_DIR/{drafter,verifier}/: train.log, train.pid, checkpoints/, metrics.jsonl,
# config.gin and, when done, export/ (what spec_cascade.checkpoints.load_params reads).
# SEQUENTIAL=1 runs them one after the other instead (e.g. on a 1-core machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

WAIT=0; ACTION=start
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --wait) WAIT=1 ;;
    --status) ACTION=status ;;
    --stop) ACTION=stop ;;
    *) ARGS+=("$arg") ;;
  esac
done
OUT="${SPEC_CASCADE_RUNS:-$ROOT/runs/offline}"
if [ "${#ARGS[@]}" -gt 0 ] && [[ "${ARGS[0]}" != --* ]]; then
  OUT="${ARGS[0]}"; ARGS=("${ARGS[@]:1}")
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
NAMES=(drafter verifier)

running() {  # running NAME → 0 if its recorded pid is alive
  local pidfile="$OUT/$1/train.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

if [ "$ACTION" = status ]; then
  for name in "${NAMES[@]}"; do
    state=stopped; running "$name" && state=running
    [ -d "$OUT/$name/export" ] && [ "$state" = stopped ] && state=finished
    last="$(grep -h ' step ' "$OUT/$name/train.log" 2>/dev/null | tail -n 1 || true)"
    echo "$name: $state ${last:+— ${last##*] }}"
  done
  exit 0
fi
if [ "$ACTION" = stop ]; then
  for name in "${NAMES[@]}"; do
    if running "$name"; then
      kill -TERM -- "-$(cat "$OUT/$name/train.pid")" && echo "stopped $name (resume by re-running)"
    fi
  done
  exit 0
fi

source "$ROOT/scripts/env.sh"
cd "$ROOT"
# Build the corpora and the vocabulary once, before two processes race for them.
python -c "from spec_cascade.data import offline, vocab; offline.build_corpora(); print('[data]', vocab.get_vocab_path())"

NCPU="$(nproc)"
launch() {  # launch NAME CORE
  local name="$1" core="$2" dir="$OUT/$1"
  mkdir -p "$dir"
  if running "$name"; then
    echo "$name already running (pid $(cat "$dir/train.pid")); leaving it." >&2
    return
  fi
  local pin=()
  if command -v taskset >/dev/null && [ "$NCPU" -ge 2 ] && [ "${SEQUENTIAL:-0}" != 1 ]; then
    pin=(taskset -c "$core")
  fi
  # One core each: XLA's CPU client and Eigen use one thread; TF/OMP likewise.
  # The run is retried (it resumes from its last checkpoint) if it crashes, up to
  # RETRIES times; a stop (SIGTERM/SIGINT) is not retried. setsid gives the run its
  # own process group, so --stop ends the retry loop and python together.
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 ${XLA_FLAGS:-}" \
  OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \
  RETRIES="${RETRIES:-3}" \
    setsid nohup "${pin[@]}" bash -c '
      tries=0
      while true; do
        python -m spec_cascade.train "$@" && exit 0
        rc=$?
        if [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ] || [ "$tries" -ge "$RETRIES" ]; then exit "$rc"; fi
        tries=$((tries + 1)); echo "[train_offline_pair] exit $rc; resuming (retry $tries)"; sleep 10
      done' _ --gin_file="configs/offline/train_$name.gin" \
      --gin.MODEL_DIR="'$dir'" "${ARGS[@]}" >>"$dir/train.log" 2>&1 < /dev/null &
  echo $! > "$dir/train.pid"
  echo "$name: pid $! on core ${pin[*]:+$core}, log $dir/train.log"
}

if [ "${SEQUENTIAL:-0}" = 1 ]; then
  for name in "${NAMES[@]}"; do
    launch "$name" 0
    pid="$(cat "$OUT/$name/train.pid")"
    while kill -0 "$pid" 2>/dev/null; do sleep 30; done
  done
else
  launch drafter 0
  launch verifier $(( NCPU >= 2 ? 1 : 0 ))
  if [ "$WAIT" = 1 ]; then
    status=0
    for name in "${NAMES[@]}"; do
      pid="$(cat "$OUT/$name/train.pid")"
      while kill -0 "$pid" 2>/dev/null; do sleep 30; done
      [ -d "$OUT/$name/export" ] || { echo "$name did not finish; see $OUT/$name/train.log" >&2; status=1; }
    done
    exit "$status"
  fi
fi
echo "Progress: bash scripts/train_offline_pair.sh --status${OUT:+ $OUT}"
