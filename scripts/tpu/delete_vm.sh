#!/usr/bin/env bash
# Deletes a TPU VM (all its hosts). Copy the results first (scripts/tpu/copy_results.sh).
#
#   bash scripts/tpu/delete_vm.sh --tpu_name=NAME --zone=ZONE [--project=PROJECT] [--dry_run]
#
# Settings may also come from TPU_NAME, ZONE, PROJECT, DRY_RUN=1 (see scripts/tpu/common.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
no_rest
require TPU_NAME --tpu_name
require ZONE --zone
tpu_vm delete "$TPU_NAME" --quiet "${PASSTHROUGH[@]}"
