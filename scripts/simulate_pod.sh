#!/usr/bin/env bash
# Rehearses a multi-host (TPU pod) run on this machine: N local processes with D CPU devices
# each, joined into one pod over 127.0.0.1 (see spec_cascade/simulate_pod.py and docs/tpu.md).
#   scripts/simulate_pod.sh 2 2 -- python -m spec_cascade.infer --gin_file=configs/runs/infer.gin ...
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi
exec python -m spec_cascade.simulate_pod "$@"
