#!/usr/bin/env bash
# Creates a TPU VM (one host for v4-8, several hosts for bigger slices such as v4-32).
#
#   bash scripts/tpu/create_vm.sh --tpu_name=NAME --zone=ZONE [--accelerator_type=v4-8]
#       [--version=tpu-ubuntu2204-base] [--project=PROJECT] [--spot] [--dry_run] [-- GCLOUD_ARGS...]
#
# Settings may also come from TPU_NAME, ZONE, ACCELERATOR_TYPE, TPU_VERSION, PROJECT, DRY_RUN=1
# (see scripts/tpu/common.sh). Arguments after "--" go to `gcloud compute tpus tpu-vm create`
# unchanged (e.g. --network=NAME).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
SPOT=0
if ((${#REST[@]})) && [[ "${REST[0]}" == --spot ]]; then
  SPOT=1
  REST=("${REST[@]:1}")
fi
no_rest
require TPU_NAME --tpu_name
require ZONE --zone
[[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "ACCELERATOR_TYPE '$ACCELERATOR_TYPE' does not look like a TPU type such as v4-8 or v4-32."

CREATE=(create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
((SPOT)) && CREATE+=(--spot)
tpu_vm "${CREATE[@]}" "${PASSTHROUGH[@]}"
