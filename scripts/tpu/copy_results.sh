#!/usr/bin/env bash
# Copies a run's output folder to this machine.
#
#   bash scripts/tpu/copy_results.sh --src=PATH [--dest=DIR] [--tpu_name=NAME --zone=ZONE] [--dry_run]
#
# --src=gs://bucket/run : copied with gsutil (no TPU VM needed).
# --src=runs/paper/...  : copied from worker 0 with `gcloud compute tpus tpu-vm scp --recurse`
#                         (a relative path is under REMOTE_DIR on the host; multi-host runs write
#                         their results from process 0, i.e. worker 0).
# --dest defaults to ./tpu_results (created if missing); the copy lands in DEST/<basename of src>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SRC="${SRC:-}"
DEST="${DEST:-tpu_results}"
parse_common_flags "$@"
set -- "${REST[@]}"
REST=()
while (($#)); do
  case "$1" in
    --src=*) SRC="${1#*=}" ;;
    --dest=*) DEST="${1#*=}" ;;
    *) REST+=("$1") ;;
  esac
  shift
done
no_rest
[[ -n "$SRC" ]] || die "SRC is not set: pass --src=PATH (a folder on worker 0 or a gs:// URL)."
SRC="${SRC%/}"

run mkdir -p "$DEST"
if [[ "$SRC" == gs://* ]]; then
  run gsutil -m cp -r "$SRC" "$DEST/"
else
  require TPU_NAME --tpu_name
  require ZONE --zone
  [[ "$SRC" == /* ]] || SRC="$REMOTE_DIR/$SRC"
  tpu_vm scp --recurse --worker=0 "$TPU_NAME:$SRC" "$DEST/" "${PASSTHROUGH[@]}"
fi
