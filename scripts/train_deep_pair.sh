#!/usr/bin/env bash
# Makes the deep offline pair, stage by stage (each stage resumable: re-run the same command):
#   1. base   the 'tiny' drafter and 'mini' verifier, trained from scratch into OUT/base with
#             scripts/train_offline_pair.sh (≈ 2.5 h), or --base=DIR: a pair folder holding them
#             (drafter/, verifier/), such as the earlier default pair, kept in git history:
#               mkdir -p /tmp/base && git archive 551086d spec_cascade/assets/offline_pair \
#                 | tar -x -C /tmp/base   # → --base=/tmp/base/spec_cascade/assets/offline_pair
#   2. grow   mini → mini_deep (8 decoder layers), same outputs (python -m spec_cascade.models.grow)
#   3. verifier   mini_deep trained on for 450 steps (configs/offline/train_verifier_deep.gin); --stage_in=DIR
#             continues from a committed stage artifact instead (spec_cascade.stages)
#   4. drafter    the pair's drafter, distilled from the deep verifier; --drafter= picks it:
#             token    tiny, token-level KD (configs/offline/distill_drafter.gin → OUT/drafter)
#             seq      that, then sequence-level KD on the verifier's greedy outputs
#                      (configs/offline/distill_drafter_seq.gin → OUT/drafter_seq; the default)
#             shallow  the verifier cut to its first decoder layer (models.grow
#                      --keep_decoder_layers=0), distilled the same way
#                      (configs/offline/distill_drafter_shallow.gin → OUT/drafter_shallow)
#   5. pair   both installed into OUT/pair and evaluated (python -m spec_cascade.evaluate_pair)
#
#   bash scripts/train_deep_pair.sh [OUT_DIR] [--base=DIR] [--stage_in=DIR] [--until=STAGE]
#        [--drafter=token|seq|shallow] [--gin.X=V ...  (passed to every training stage)]
#
# OUT_DIR defaults to runs/offline_deep. A stop (Ctrl-C / SIGTERM) saves a checkpoint first.
# To carry an unfinished verifier to another machine, save a stage artifact and commit it:
#   python -m spec_cascade.stages --model_dir=OUT_DIR/verifier --dest=stages/offline_deep/verifier \
#     --recipe=configs/offline/train_verifier_deep.gin --model=mini_deep
# This is how the committed default pair (spec_cascade/assets/offline_pair) was made, with
# --drafter=seq. To install a finished pair as the default:
#   python -m spec_cascade.pretrained --force --drafter=OUT_DIR/drafter --verifier=OUT_DIR/verifier
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"

OUT=runs/offline_deep; BASE=""; STAGE_IN=""; UNTIL=pair; GIN=(); DRAFTER=seq
for arg in "$@"; do
  case "$arg" in
    --base=*) BASE="${arg#--base=}" ;;
    --stage_in=*) STAGE_IN="${arg#--stage_in=}" ;;
    --until=*) UNTIL="${arg#--until=}" ;;
    --drafter=*) DRAFTER="${arg#--drafter=}" ;;
    --gin.*) GIN+=("$arg") ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    --*) echo "unknown flag $arg" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
case "$UNTIL" in base|grow|verifier|drafter|pair) ;; *)
  echo "--until must be one of base, grow, verifier, drafter, pair" >&2; exit 2 ;; esac
case "$DRAFTER" in token|seq|shallow) ;; *)
  echo "--drafter must be one of token, seq, shallow" >&2; exit 2 ;; esac
if [ -n "$BASE" ]; then  # checked before any work
  info="$BASE/verifier/spec_cascade_checkpoint.json"
  layers="$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['t5_config']['num_decoder_layers'])" "$info" 2>/dev/null || echo none)"
  if [ "$layers" != 4 ]; then
    echo "error: --base=$BASE must hold the 'mini' base verifier (4 decoder layers) in verifier/;" \
         "$info gives $layers. Leave out --base to train the base pair from scratch." >&2
    exit 2
  fi
fi
mkdir -p "$OUT"
say() { echo "[deep pair] $*" >&2; }

python -c 'from spec_cascade.data import offline; offline.build_corpora()'

if [ -z "$BASE" ]; then
  BASE="$OUT/base"
  say "1/5 base pair from scratch in $BASE (hours; resumable)"
  bash scripts/train_offline_pair.sh "$BASE" --wait
  BASE_DRAFTER="$BASE/drafter"; BASE_VERIFIER="$BASE/verifier"
else
  BASE_DRAFTER="$BASE/drafter"; BASE_VERIFIER="$BASE/verifier"
  say "1/5 base pair: $BASE"
fi
[ "$UNTIL" = base ] && exit 0

if [ -z "$STAGE_IN" ] && [ ! -d "$OUT/grown" ]; then
  say "2/5 growing $BASE_VERIFIER to 8 decoder layers → $OUT/grown"
  python -m spec_cascade.models.grow --src="$BASE_VERIFIER" --dst="$OUT/grown" \
    --num_decoder_layers=8
fi
[ "$UNTIL" = grow ] && exit 0

START="${STAGE_IN:-$OUT/grown}"
say "3/5 verifier: training mini_deep from $START → $OUT/verifier (resumable)"
python -m spec_cascade.train --gin_file=configs/offline/train_verifier_deep.gin \
  --gin.MODEL_DIR="'$OUT/verifier'" --gin.INITIAL_CHECKPOINT_PATH="'$START'" \
  ${GIN[@]+"${GIN[@]}"} 2>&1 | tee -a "$OUT/verifier.log"
[ "$UNTIL" = verifier ] && exit 0

distill() {  # distill NAME GIN_FILE INITIAL_CHECKPOINT
  python -m spec_cascade.train --gin_file="$2" --gin.MODEL_DIR="'$OUT/$1'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$3'" --gin.TEACHER_CHECKPOINT_PATH="'$OUT/verifier'" \
    ${GIN[@]+"${GIN[@]}"} 2>&1 | tee -a "$OUT/$1.log"
}
if [ "$DRAFTER" = shallow ]; then
  if [ ! -d "$OUT/shallow_cut" ]; then
    python -m spec_cascade.models.grow --src="$OUT/verifier" --dst="$OUT/shallow_cut" \
      --keep_decoder_layers=0
  fi
  # The seq stage's teacher outputs serve as well (same seed, so the same inputs and order).
  if [ -d "$OUT/drafter_seq/teacher_targets" ] && [ ! -e "$OUT/drafter_shallow/teacher_targets" ]; then
    mkdir -p "$OUT/drafter_shallow"
    cp -al "$OUT/drafter_seq/teacher_targets" "$OUT/drafter_shallow/"
  fi
  say "4/5 drafter: distilling the verifier's first decoder layer → $OUT/drafter_shallow"
  distill drafter_shallow configs/offline/distill_drafter_shallow.gin "$OUT/shallow_cut"
  FINAL_DRAFTER="$OUT/drafter_shallow"
else
  say "4/5 drafter: distilling tiny from the deep verifier → $OUT/drafter (resumable)"
  distill drafter configs/offline/distill_drafter.gin "$BASE_DRAFTER"
  FINAL_DRAFTER="$OUT/drafter"
  if [ "$DRAFTER" = seq ]; then
    say "4/5 drafter: sequence-level KD on the verifier's outputs → $OUT/drafter_seq"
    distill drafter_seq configs/offline/distill_drafter_seq.gin "$OUT/drafter"
    FINAL_DRAFTER="$OUT/drafter_seq"
  fi
fi
[ "$UNTIL" = drafter ] && exit 0

say "5/5 pair: installing into $OUT/pair and evaluating"
python -m spec_cascade.pretrained --force --drafter="$FINAL_DRAFTER" --verifier="$OUT/verifier" \
  --dest="$OUT/pair"
python -m spec_cascade.evaluate_pair --drafter="$OUT/pair/drafter" \
  --verifier="$OUT/pair/verifier" --vocabulary_path="$OUT/pair/vocab/sentencepiece.model" \
  --num_examples=200 --json="$OUT/pair/evaluation.json"
