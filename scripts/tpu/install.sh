#!/usr/bin/env bash
# Puts the project on every host of a TPU VM and installs it with JAX's TPU runtime.
#
#   bash scripts/tpu/install.sh --tpu_name=NAME --zone=ZONE [--project=PROJECT]
#       [--remote_dir=spec_cascade] [--repo_url=URL [--ref=BRANCH_OR_COMMIT]]
#       [--python=python3.11] [--dry_run]
#
# Source of the code: by default this checkout (tracked and untracked-but-not-ignored files) is
# packed, copied to every host and unpacked into REMOTE_DIR; with --repo_url (or REPO_URL) every host
# clones (or updates) that repository instead and checks out --ref (default: the remote's HEAD).
# Each host then runs scripts/env.sh (a .venv with spec_cascade[dev]) and installs `jax[tpu]` at
# the same version as the jax it resolved, so jax and libtpu match. The TPU images ship Python
# 3.10; the project needs >= 3.11, so the interpreter (--python / PYTHON) is installed with apt
# when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_URL="${REPO_URL:-}"
REF="${REF:-}"
PYTHON="${PYTHON:-python3.11}"
parse_common_flags "$@"
set -- "${REST[@]}"
REST=()
while (($#)); do
  case "$1" in
    --repo_url=*) REPO_URL="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    *) REST+=("$1") ;;
  esac
  shift
done
no_rest
require TPU_NAME --tpu_name
require ZONE --zone

DIR="$(remote_path "$REMOTE_DIR")"
PY="$(printf '%q' "$PYTHON")"
TARBALL_REMOTE=/tmp/spec_cascade_src.tgz

if [[ -n "$REPO_URL" ]]; then
  URL="$(printf '%q' "$REPO_URL")"
  # fetch + detached checkout of FETCH_HEAD works alike for a branch, a tag or a commit, and for a
  # fresh clone or a re-install over an existing one.
  FETCH="{ [ -d $DIR/.git ] || git clone -q $URL $DIR; }"
  FETCH+=" && git -C $DIR fetch -q origin $(printf '%q' "${REF:-HEAD}")"
  FETCH+=" && git -C $DIR checkout -q --detach FETCH_HEAD"
else
  [[ -z "$REF" ]] || die "--ref needs --repo_url (without it this checkout is copied as it is)."
  TARBALL="$(mktemp -u /tmp/spec_cascade_src.XXXXXX).tgz"
  QROOT="$(printf '%q' "$REPO_ROOT")"
  run_sh "git -C $QROOT ls-files -z -co --exclude-standard | tar -czf $TARBALL -C $QROOT --null -T -"
  tpu_vm scp "$TARBALL" "$TPU_NAME:$TARBALL_REMOTE" --worker=all
  run rm -f "$TARBALL"
  FETCH="mkdir -p $DIR && tar -xzf $TARBALL_REMOTE -C $DIR && rm -f $TARBALL_REMOTE"
fi

REMOTE="set -euo pipefail; $FETCH; cd $DIR"
APT="sudo DEBIAN_FRONTEND=noninteractive apt-get"
REMOTE+="; if ! command -v $PY >/dev/null; then $APT update -q && $APT install -y -q $PY $PY-venv; fi"
REMOTE+="; PYTHON=$PY bash scripts/env.sh"
REMOTE+="; JAX_VERSION=\$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
REMOTE+="; .venv/bin/python -m pip install -q \"jax[tpu]==\$JAX_VERSION\""
SHOW='import jax; print("host", jax.process_index(), "local devices:", jax.local_devices())'
REMOTE+="; .venv/bin/python -c '$SHOW'"
tpu_vm ssh "$TPU_NAME" --worker=all --command="$REMOTE"
