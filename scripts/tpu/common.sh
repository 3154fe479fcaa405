# shellcheck shell=bash
# Shared helpers of the TPU VM scripts (sourced, not run).
#
# Settings come from flags or environment variables (flags win):
#   --tpu_name=NAME          TPU_NAME          name of the TPU VM (required)
#   --zone=ZONE              ZONE              e.g. us-central2-b (required)
#   --project=PROJECT        PROJECT           Google Cloud project (default: gcloud's configured one)
#   --accelerator_type=TYPE  ACCELERATOR_TYPE  e.g. v4-8 (one host) or v4-32 (four hosts); default v4-8
#   --version=VERSION        TPU_VERSION       TPU VM software image; default tpu-ubuntu2204-base
#   --remote_dir=DIR         REMOTE_DIR        checkout on every host, relative to the home folder;
#                                              default spec_cascade
#   --dry_run                DRY_RUN=1         print every command instead of running it
# Flags take the form --flag=value or --flag value.

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-spec_cascade}"
case "${DRY_RUN:-0}" in
  1|true|yes) DRY_RUN=1 ;;
  *) DRY_RUN=0 ;;
esac
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

die() {
  echo "error: $*" >&2
  exit 2
}

# The value of "--flag=value" ($1), or of "--flag value" ($1 $2).
_flag_value() {
  local arg="$1"
  if [[ "$arg" == *=* ]]; then
    printf '%s' "${arg#*=}"
  else
    printf '%s' "$2"
  fi
}

# Parses the common flags out of "$@". Unknown arguments go to the REST array (in order); arguments
# after a literal "--" go to PASSTHROUGH untouched. Scripts that take no other flags call `no_rest`.
parse_common_flags() {
  REST=()
  PASSTHROUGH=()
  while (($#)); do
    local arg="$1" name="${1%%=*}" takes=1 value=""
    case "$name" in
      --tpu_name|--zone|--project|--accelerator_type|--version|--remote_dir)
        if [[ "$arg" != *=* ]]; then
          (($# >= 2)) || die "$name needs a value ($name=VALUE)."
          takes=2
        fi
        value="$(_flag_value "$arg" "${2:-}")"
        case "$name" in
          --tpu_name) TPU_NAME="$value" ;;
          --zone) ZONE="$value" ;;
          --project) PROJECT="$value" ;;
          --accelerator_type) ACCELERATOR_TYPE="$value" ;;
          --version) TPU_VERSION="$value" ;;
          --remote_dir) REMOTE_DIR="$value" ;;
        esac
        ;;
      --dry_run) DRY_RUN=1 ;;
      --)
        shift
        PASSTHROUGH+=("$@")
        break
        ;;
      *) REST+=("$arg") ;;
    esac
    shift "$takes"
  done
}

no_rest() {
  ((${#REST[@]} == 0)) || die "unknown argument(s): ${REST[*]} (see the header of $0 for the flags)."
}

# require VAR FLAG: fails with a message naming both ways to provide a required setting.
require() {
  local var="$1" flag="$2"
  [[ -n "${!var}" ]] || die "$var is not set: pass $flag=... or export $var=... (see docs/tpu.md)."
}

# One argument as the shell would need it typed: bare when safe, double-quoted when that needs no
# escapes (readable for gin values such as --gin.X='a b'), else single-quoted by bash.
quote_arg() {
  local safe='^[A-Za-z0-9_./:=@%+,~-]+$' dq_safe='^[^"$`\\!]*$'
  if [[ "$1" =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ $dq_safe ]]; then
    printf '"%s"' "$1"
  else
    printf '%s' "${1@Q}"
  fi
}

quote_cmd() {
  local out=() a
  for a in "$@"; do out+=("$(quote_arg "$a")"); done
  printf '%s' "${out[*]}"
}

# Runs a command, or prints it (prefixed by "+ ") under --dry_run.
run() {
  if ((DRY_RUN)); then
    echo "+ $(quote_cmd "$@")"
  else
    "$@"
  fi
}

# Runs a shell pipeline given as one string, or prints it under --dry_run.
run_sh() {
  if ((DRY_RUN)); then
    echo "+ $1"
  else
    bash -o pipefail -c "$1"
  fi
}

# gcloud compute tpus tpu-vm SUBCOMMAND ARGS... with the zone and (if set) project appended.
tpu_vm() {
  local project_flag=()
  [[ -n "$PROJECT" ]] && project_flag=(--project="$PROJECT")
  run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${project_flag[@]}"
}

# Quotes a folder for a remote shell command, keeping it relative to the home folder when relative.
remote_path() {
  printf '%q' "$1"
}
