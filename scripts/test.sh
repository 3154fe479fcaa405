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
# Workers share the cores: the few-row kernel's helper thread (a second core per product) would
# only contend with the other workers, so each worker keeps its products on one thread (the
# kernel tests set two threads themselves).
if [ "$WORKERS" -gt 1 ]; then export SPEC_CASCADE_KERNEL_THREADS="${SPEC_CASCADE_KERNEL_THREADS:-1}"; fi
# One persistent compilation cache per run, shared by the workers and the processes tests
# start: many tests compile the same small programs (the test pairs are few), so each is
# compiled once per run. Fresh each run (removed at exit) so timings do not depend on history;
# set JAX_COMPILATION_CACHE_DIR to keep one across runs.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t spec_cascade_jax_cache.XXXXXX)"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.2}"
# The tests' programs are small and compiled once or twice each: compiling them is most of the
# suite's time, and XLA's backend optimisation level 0 compiles about a third faster (the dots
# still run in XLA's library kernels). Outputs are compared between programs built alike.
export XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
python -m pytest -q --durations=30 -n "$WORKERS" --dist loadfile "$@"
