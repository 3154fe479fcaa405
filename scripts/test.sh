#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end tests included) in .venv,
# creating it on first use. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"     # the fast tests only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m pytest -q --durations=30 "$@"
