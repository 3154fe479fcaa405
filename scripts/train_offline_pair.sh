#!/usr/bin/env bash
# Trains the offline default pair — drafter (configs/offline/train_drafter.gin) and
# verifier (configs/offline/train_verifier.gin) — in the background. Both start side by
# side, each pinned to one CPU core; when the drafter finishes (it has the smaller budget),
# the verifier is stopped at a checkpoint and continues on all cores. Re-running the script
# resumes both from their latest checkpoints (a finished run only re-exports), so an
# interrupted pair is continued by running the same command again.
#
#   bash scripts/train_offline_pair.sh [OUT_DIR] [extra --gin.X=V flags for both]
#   bash scripts/train_offline_pair.sh --wait        # ... and wait for both to finish
#   bash scripts/train_offline_pair.sh --status      # progress of both runs
#   bash scripts/train_offline_pair.sh --stop        # stop both (resumable later)
#
# OUT_DIR defaults to $SPEC_CASCADE_RUNS or runs/offline. Each model writes
# OUT_DIR/{drafter,verifier}/: train.log, train.pid, checkpoints/, metrics.jsonl,
# config.gin and, when done, export/ (what spec_cascade.checkpoints.load_params reads).
# SEQUENTIAL=1 runs them one after the other, each on all cores. A stop (SIGTERM/SIGINT)
# makes the trainer save a checkpoint at the step it is on, so nothing is lost.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

WAIT=0; ACTION=start
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --wait) WAIT=1 ;;
    --status) ACTION=status ;;
    --stop) ACTION=stop ;;
    --handoff) ACTION=handoff ;;  # internal: the supervisor started by `start`
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
POLL="${SPEC_CASCADE_POLL_S:-20}"  # seconds between checks while waiting

alive() {  # alive PIDFILE → 0 if the process group it records has a live process
  [ -f "$1" ] && kill -0 -- "-$(cat "$1")" 2>/dev/null
}
running() { alive "$OUT/$1/train.pid"; }

if [ "$ACTION" = status ]; then
  for name in "${NAMES[@]}"; do
    state=stopped; running "$name" && state=running
    [ -d "$OUT/$name/export" ] && [ "$state" = stopped ] && state=finished
    last="$(grep -h ' step ' "$OUT/$name/train.log" 2>/dev/null | tail -n 1 || true)"
    echo "$name: $state ${last:+— ${last##*] }}"
  done
  alive "$OUT/handoff.pid" && echo "(the verifier moves to all cores when the drafter finishes)"
  exit 0
fi
if [ "$ACTION" = stop ]; then
  alive "$OUT/handoff.pid" && kill -TERM -- "-$(cat "$OUT/handoff.pid")" 2>/dev/null || true
  for name in "${NAMES[@]}"; do
    if running "$name"; then
      kill -TERM -- "-$(cat "$OUT/$name/train.pid")" && echo "stopping $name: it saves a checkpoint at its current step (resume by re-running)"
    fi
  done
  exit 0
fi

source "$ROOT/scripts/env.sh"
cd "$ROOT"
NCPU="$(nproc)"

launch() {  # launch NAME CORE|all
  local name="$1" core="$2" dir="$OUT/$1"
  mkdir -p "$dir"
  if running "$name"; then
    echo "$name already running (pid $(cat "$dir/train.pid")); leaving it." >&2
    return
  fi
  local pin=() threads=()
  if [ "$core" != all ] && command -v taskset >/dev/null && [ "$NCPU" -ge 2 ]; then
    pin=(taskset -c "$core")
    # One core each: XLA's CPU client and Eigen use one thread; TF/OMP likewise.
    threads=(XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 ${XLA_FLAGS:-}"
             OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1)
  fi
  # The run is retried (it resumes from its last checkpoint) if it crashes, up to
  # RETRIES times; a stop (SIGTERM/SIGINT) is not retried. setsid gives the run its
  # own process group, so --stop ends the retry loop and python together.
  env "${threads[@]}" RETRIES="${RETRIES:-3}" \
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
  local where="all cores"; [ "${#pin[@]}" -gt 0 ] && where="core $core"
  echo "$name: pid $! on $where, log $dir/train.log"
}

if [ "$ACTION" = handoff ]; then
  # Waits for the drafter; if it exported (finished), stops the pinned verifier — the
  # trainer saves a checkpoint at the step it is on — and restarts it on all cores.
  started="$OUT/handoff.pid"
  while running drafter; do sleep "$POLL"; done
  if [ "$OUT/drafter/export/spec_cascade_checkpoint.json" -nt "$started" ] && running verifier; then
    echo "[train_offline_pair] drafter finished; moving the verifier to all cores"
    kill -TERM -- "-$(cat "$OUT/verifier/train.pid")" || true
    while running verifier; do sleep 1; done
    launch verifier all
  fi
  exit 0
fi

# Build the corpora and the vocabulary once, before two processes race for them.
python -c "from spec_cascade.data import offline, vocab; offline.build_corpora(); print('[data]', vocab.get_vocab_path())"

if [ "${SEQUENTIAL:-0}" = 1 ] || [ "$NCPU" -lt 2 ]; then
  for name in "${NAMES[@]}"; do
    launch "$name" all
    while running "$name"; do sleep "$POLL"; done
  done
else
  launch drafter 0
  launch verifier 1
  if ! alive "$OUT/handoff.pid"; then
    setsid nohup bash "$ROOT/scripts/train_offline_pair.sh" --handoff "$OUT" "${ARGS[@]}" \
      >>"$OUT/verifier/train.log" 2>&1 < /dev/null &
    echo $! > "$OUT/handoff.pid"
  fi
  if [ "$WAIT" = 1 ]; then
    while alive "$OUT/handoff.pid" || running drafter || running verifier; do sleep "$POLL"; done
  fi
fi
if [ "$WAIT" = 1 ] || [ "${SEQUENTIAL:-0}" = 1 ]; then
  status=0
  for name in "${NAMES[@]}"; do
    [ -d "$OUT/$name/export" ] || { echo "$name did not finish; see $OUT/$name/train.log" >&2; status=1; }
  done
  exit "$status"
fi
echo "Progress: bash scripts/train_offline_pair.sh --status${OUT:+ $OUT}"
