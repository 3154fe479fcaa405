#!/usr/bin/env bash
# Runs a spec_cascade entry point on every host of a TPU VM at once (multi-host slices need every
# host to run the same program; the entry point calls jax.distributed.initialize()).
#
#   bash scripts/tpu/launch.sh --tpu_name=NAME --zone=ZONE [--module=spec_cascade.sweep]
#       [--background [--log=FILE]] [--dry_run] --gin_file=F.gin [--gin.MACRO=VALUE ...] [ARGS...]
#
# Every argument the script does not know (and everything after "--") is passed to
# `python -m MODULE` unchanged and quoted for the remote shell, e.g.
#   --gin_file=configs/paper/wmt_ende.gin --gin.SWEEP_OUTPUT_DIR="'gs://bucket/run'"
# --background detaches the run (nohup) and writes its output to FILE on each host
# (default logs/<module>-<UTC time>.log under REMOTE_DIR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODULE="${MODULE:-spec_cascade.sweep}"
BACKGROUND=0
LOG=""
parse_common_flags "$@"
ARGS=()
for a in "${REST[@]}"; do
  case "$a" in
    --module=*) MODULE="${a#*=}" ;;
    --background) BACKGROUND=1 ;;
    --log=*) LOG="${a#*=}" ;;
    *) ARGS+=("$a") ;;
  esac
done
ARGS+=("${PASSTHROUGH[@]}")
require TPU_NAME --tpu_name
require ZONE --zone
[[ "$MODULE" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module '$MODULE' is not a Python module name."
if [[ "$MODULE" == spec_cascade.sweep || "$MODULE" == spec_cascade.train ||
      "$MODULE" == spec_cascade.infer ]]; then
  has_gin=0
  for a in "${ARGS[@]}"; do [[ "$a" == --gin_file=* ]] && has_gin=1; done
  ((has_gin)) || die "$MODULE needs at least one --gin_file=FILE (e.g. configs/paper/wmt_ende.gin)."
fi

PY_CMD="python -m $MODULE"
for a in "${ARGS[@]}"; do PY_CMD+=" $(printf '%q' "$a")"; done
# SPEC_CASCADE_MULTIHOST=1: every host calls jax.distributed.initialize(), which finds the
# slice by itself on TPU VMs (one host or many), so the hosts form one pod (spec_cascade/pod.py).
REMOTE="cd $(remote_path "$REMOTE_DIR") && . .venv/bin/activate && export TF_CPP_MIN_LOG_LEVEL=3 SPEC_CASCADE_MULTIHOST=1"
if ((BACKGROUND)); then
  [[ -n "$LOG" ]] || LOG="logs/${MODULE##*.}-$(date -u +%Y%m%dT%H%M%SZ).log"
  QLOG="$(printf '%q' "$LOG")"
  REMOTE+=" && mkdir -p \"\$(dirname $QLOG)\" && nohup $PY_CMD > $QLOG 2>&1 < /dev/null &"
else
  REMOTE+=" && $PY_CMD"
fi
tpu_vm ssh "$TPU_NAME" --worker=all --command="$REMOTE"
