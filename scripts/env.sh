#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment in .venv,
# installing the package with its dev extra. Sourced by the other scripts.
# SPEC_CASCADE_VENV overrides the location; PYTHON picks the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPEC_CASCADE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.spec_cascade_installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
WANT="$(cat "$ROOT/setup.py" "$ROOT"/requirements/*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[env] installing spec_cascade[dev,parity] (first run takes a few minutes)" >&2
  python -m pip install -q --upgrade pip >&2
  CONSTRAINTS=()
  if python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    CONSTRAINTS=(-c "$ROOT/requirements/constraints-py311.txt")
  fi
  # pip's notes about unused local index folders are noise; real errors still show.
  set +o pipefail
  python -m pip install -q "${CONSTRAINTS[@]}" -e "$ROOT[dev,parity]" 2>&1 \
    | grep -v "^WARNING: Location .* is ignored" >&2
  rc="${PIPESTATUS[0]}"
  set -o pipefail
  if [ "$rc" != 0 ]; then
    echo "[env] pip install failed (exit $rc); see its messages above." >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
