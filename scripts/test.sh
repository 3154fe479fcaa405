#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end tests included) in .venv,
# creating it on first use. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"     # the fast tests only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
# One pytest worker per core, at most 4 (each test file runs whole in one worker, so its
# module fixtures are built once): on the 2-core box the suite takes ~38 minutes instead of ~50.
# SPEC_CASCADE_TEST_WORKERS=0 runs everything in this process.
WORKERS="${SPEC_CASCADE_TEST_WORKERS:-$(nproc)}"
if [ "$WORKERS" -gt 4 ]; then WORKERS=4; fi
exec python -m pytest -q --durations=30 -n "$WORKERS" --dist loadfile "$@"
