#!/usr/bin/env bash
# The main job: the offline default sweep (configs/offline/main.gin) — the offline drafter/verifier
# pair on both offline tasks (Debian EN→DE and summarization), every method, T ∈ {0, 1}, γ = 5 —
# then the paper-style tables. Results go to runs/offline_default/ (report.md, results.csv, plots).
#
#   bash scripts/main.sh [--quick] [--gin.NAME=VALUE ...] [other spec_cascade.sweep flags]
#
# --quick runs configs/offline/quick.gin instead (4 methods, 16 examples per task: ≤ 3 minutes).
# The first run builds the offline corpora (from Debian's archive, cached in ~/.cache/spec_cascade
# or $SPEC_CASCADE_CACHE) and the project's .venv. Re-running resumes: finished points are skipped.
# Budget on a 2-core CPU: ≤ 20 minutes for the first full run, set-up included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"

GIN_FILE=configs/offline/main.gin
ARGS=()
for a in "$@"; do
  case "$a" in
    --quick) GIN_FILE=configs/offline/quick.gin ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) ARGS+=("$a") ;;
  esac
done

# Fail early, with the way out, when the trained pair is missing.
python -c 'from spec_cascade import pretrained; pretrained.check_offline_pair()' || {
  echo "[main] the offline drafter/verifier pair is missing; see the message above." >&2
  exit 1
}
# Build the offline corpora now (first use downloads Debian packages with apt-get), so a
# failure there is reported before the sweep starts.
python -c 'from spec_cascade.data import offline; offline.build_corpora()'

exec python -m spec_cascade.sweep --gin_file="$GIN_FILE" "${ARGS[@]}"
