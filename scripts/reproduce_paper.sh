#!/usr/bin/env bash
# Reproduces the paper's T5 experiments (docs/method.md §6): fine-tune T5 v1.1 small (drafter) and
# large (verifier) on each task, sweep every method over α, and write the tables and plots.
#
#   bash scripts/reproduce_paper.sh [--dry_run] [--tasks=wmt_ende,cnn_dailymail,xsum]
#       [--stages=finetune,sweep,report] [--output_dir=runs/paper]
#       [--tpu [--setup_vm] [--teardown_vm] [--local_results=tpu_results/paper] TPU FLAGS...]
#       [-- ARGS FOR EVERY TRAIN/SWEEP RUN...]
#
# Without --tpu every step runs here (in the project's .venv, created by scripts/env.sh).
# With --tpu the train and sweep steps run on every host of a TPU VM through scripts/tpu/launch.sh
# (TPU FLAGS: --tpu_name, --zone, --project, --accelerator_type, --version, --remote_dir, or the
# matching environment variables; see scripts/tpu/common.sh), the results are copied back with
# scripts/tpu/copy_results.sh and the report is written here. --setup_vm first creates the VM and
# installs the project (create_vm.sh + install.sh); --teardown_vm deletes it at the end.
# For multi-host slices (v4-16 and up) make --output_dir a gs:// folder every host can reach.
# Arguments after "--" go to every train and sweep run, e.g. -- --tfds_data_dir=gs://bucket/tfds
# --dry_run (or DRY_RUN=1) prints every command instead of running it.
#
# Gin interface assumed of the entry points (configs/paper/):
#   train: --gin_file=configs/models/t5_1_1/{small,large}.gin --gin_file=configs/paper/finetune_<task>.gin
#          with macros MODEL_DIR and INITIAL_CHECKPOINT_PATH (the public T5X checkpoint).
#   sweep: --gin_file=configs/paper/<task>.gin with macros DRAFTER_CHECKPOINT_PATH,
#          VERIFIER_CHECKPOINT_PATH (the fine-tuned model folders) and SWEEP_OUTPUT_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/tpu/common.sh"

TASKS="${TASKS:-wmt_ende,cnn_dailymail,xsum}"
STAGES="${STAGES:-finetune,sweep,report}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/paper}"
LOCAL_RESULTS="${LOCAL_RESULTS:-tpu_results/paper}"
PRETRAINED_ROOT="${PRETRAINED_ROOT:-gs://t5-data/pretrained_models/t5x}"
PRETRAINED_STEP="${PRETRAINED_STEP:-1000000}"
DRAFTER_SIZE="${DRAFTER_SIZE:-small}"
VERIFIER_SIZE="${VERIFIER_SIZE:-large}"
PYTHON_BIN="${PYTHON_BIN:-python}"
USE_TPU=0
SETUP_VM=0
TEARDOWN_VM=0

# The TPU flags are parsed by common.sh; they are kept so the TPU scripts get them too.
TPU_FLAGS=()
for a in "$@"; do
  [[ "$a" == -- ]] && break
  case "$a" in
    --tpu_name*|--zone*|--project*|--accelerator_type*|--version*|--remote_dir*) TPU_FLAGS+=("$a") ;;
  esac
done
parse_common_flags "$@"
for a in "${REST[@]}"; do
  case "$a" in
    --tpu) USE_TPU=1 ;;
    --setup_vm) SETUP_VM=1 ;;
    --teardown_vm) TEARDOWN_VM=1 ;;
    --tasks=*) TASKS="${a#*=}" ;;
    --stages=*) STAGES="${a#*=}" ;;
    --output_dir=*) OUTPUT_DIR="${a#*=}" ;;
    --local_results=*) LOCAL_RESULTS="${a#*=}" ;;
    *) die "unknown argument '$a' (see the header of $0; arguments for the runs go after '--')." ;;
  esac
done
((${#TPU_FLAGS[@]} == 0 || USE_TPU)) || die "TPU flags (${TPU_FLAGS[*]}) need --tpu."
((!SETUP_VM && !TEARDOWN_VM)) || ((USE_TPU)) || die "--setup_vm/--teardown_vm need --tpu."

IFS=, read -r -a TASK_LIST <<< "$TASKS"
IFS=, read -r -a STAGE_LIST <<< "$STAGES"
((${#TASK_LIST[@]})) || die "--tasks is empty."
for s in "${STAGE_LIST[@]}"; do
  [[ "$s" =~ ^(finetune|sweep|report)$ ]] || die "unknown stage '$s'; stages are finetune, sweep, report."
done
for t in "${TASK_LIST[@]}"; do
  [[ "$t" =~ ^[A-Za-z0-9_]+$ ]] || die "task name '$t' is not a plain name such as wmt_ende."
done
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }

# Gin files must exist in this checkout (the TPU hosts get a copy of it).
if ! ((DRY_RUN)); then
  for t in "${TASK_LIST[@]}"; do
    files=()
    has_stage finetune && files+=("configs/paper/finetune_$t.gin"
      "configs/models/t5_1_1/$DRAFTER_SIZE.gin" "configs/models/t5_1_1/$VERIFIER_SIZE.gin")
    has_stage sweep && files+=("configs/paper/$t.gin")
    for f in "${files[@]}"; do
      [[ -f "$ROOT/$f" ]] ||
        die "$f not found in $ROOT; is '$t' a paper task (wmt_ende, cnn_dailymail, xsum)?"
    done
  done
fi

if ((USE_TPU)); then
  require TPU_NAME --tpu_name
  require ZONE --zone
  export TPU_NAME ZONE PROJECT ACCELERATOR_TYPE TPU_VERSION REMOTE_DIR DRY_RUN
  [[ "$OUTPUT_DIR" == gs://* ]] ||
    echo "note: --output_dir=$OUTPUT_DIR is on each host's disk;" \
      "multi-host slices need a gs:// folder (checkpoints are written by every host; sweeps" \
      "stage locally on host 0 and copy there)." >&2
elif ! ((DRY_RUN)); then
  source "$ROOT/scripts/env.sh"
fi
cd "$ROOT"

# step MODULE ARGS...: one entry point run, here or on every TPU host.
step() {
  local module="$1"
  shift
  if ((USE_TPU)); then
    bash "$ROOT/scripts/tpu/launch.sh" --module="$module" "$@" "${PASSTHROUGH[@]}"
  else
    run "$PYTHON_BIN" -m "$module" "$@" "${PASSTHROUGH[@]}"
  fi
}

if ((SETUP_VM)); then
  bash "$ROOT/scripts/tpu/create_vm.sh"
  bash "$ROOT/scripts/tpu/install.sh"
fi

for t in "${TASK_LIST[@]}"; do
  if has_stage finetune; then
    for size in "$DRAFTER_SIZE" "$VERIFIER_SIZE"; do
      step spec_cascade.train \
        --gin_file="configs/models/t5_1_1/$size.gin" \
        --gin_file="configs/paper/finetune_$t.gin" \
        --gin.MODEL_DIR="'$OUTPUT_DIR/models/${t}_$size'" \
        --gin.INITIAL_CHECKPOINT_PATH="'$PRETRAINED_ROOT/t5_1_1_$size/checkpoint_$PRETRAINED_STEP'"
    done
  fi
  if has_stage sweep; then
    step spec_cascade.sweep \
      --gin_file="configs/paper/$t.gin" \
      --gin.DRAFTER_CHECKPOINT_PATH="'$OUTPUT_DIR/models/${t}_$DRAFTER_SIZE'" \
      --gin.VERIFIER_CHECKPOINT_PATH="'$OUTPUT_DIR/models/${t}_$VERIFIER_SIZE'" \
      --gin.SWEEP_OUTPUT_DIR="'$OUTPUT_DIR/sweeps/$t'"
  fi
  if has_stage report; then
    if ((USE_TPU)); then
      bash "$ROOT/scripts/tpu/copy_results.sh" --src="$OUTPUT_DIR/sweeps/$t" --dest="$LOCAL_RESULTS"
      run "$PYTHON_BIN" -m spec_cascade.report "$LOCAL_RESULTS/$t"
    else
      run "$PYTHON_BIN" -m spec_cascade.report "$OUTPUT_DIR/sweeps/$t"
    fi
  fi
done

if ((TEARDOWN_VM)); then
  bash "$ROOT/scripts/tpu/delete_vm.sh"
fi
