"""The committed offline default pair: it loads, matches its vocabulary, and decodes real text."""
import json

import numpy as np
import pytest

from spec_cascade import pretrained
from spec_cascade.decoding import generate

TEXTS = [
    "translate English to German: The house is small.",
    "summarize: This package contains the command line tools for managing audio files. It can "
    "convert between formats, normalise volume and edit tags.",
]


@pytest.fixture(scope="module")
def pair():
  return pretrained.load_offline_pair()


def _inputs(tok):
  ids = [tok.encode(t) + [tok.eos_id] for t in TEXTS]
  x = np.zeros((len(ids), max(map(len, ids))), np.int32)
  for i, row in enumerate(ids):
    x[i, :len(row)] = row
  return x


def test_pair_metadata_matches_its_vocabulary(pair):
  drafter, verifier, tok = pair
  root = pretrained.offline_pair_dir()
  assert (root / "MODEL_CARD.md").exists()
  assert drafter.model.config.vocab_size == verifier.model.config.vocab_size == 4224
  assert tok.vocab_size == 4000 + 100 <= drafter.model.config.vocab_size
  assert drafter.model.num_params() < verifier.model.num_params() / 3
  for name in ("drafter", "verifier"):
    info = json.loads((root / name / "spec_cascade_checkpoint.json").read_text())
    assert info["param_dtypes"] == ["bfloat16"], info["param_dtypes"]


@pytest.mark.slow
def test_pair_decodes_real_text_and_spec_decode_is_exact(pair):
  drafter, verifier, tok = pair
  x = _inputs(tok)
  v = generate(drafter, verifier, x, method="verifier", temperature=0.0, max_decode_length=24)
  texts = [tok.decode(r) for r in v.tokens.tolist()]
  assert "audio" in texts[1], texts
  assert (v.lengths < 24).all(), texts  # both end with EOS
  s = generate(drafter, verifier, x, method="spec_decode", temperature=0.0, num_draft_tokens=5,
               max_decode_length=24)
  np.testing.assert_array_equal(s.tokens, v.tokens)
  assert s.counters["accepted"].sum() > 0


@pytest.mark.slow
def test_verifier_beats_drafter_on_100_validation_examples(pair):
  # The pair exists to show a real cascade: the verifier must be clearly better while the
  # drafter still agrees with it often enough for speculation. The project's targets (≥ 2 BLEU,
  # ≥ 2 ROUGE-2, agreement ≥ 0.45) are met on 200 validation examples per task (MODEL_CARD.md:
  # +3.8 BLEU, +4.0 ROUGE-2, 0.47 / 0.58); on this fixed 100-example subset the gaps are +3.7
  # and +1.7 (summaries are short, so ROUGE-2 is noisy), hence the looser floor for ROUGE-2.
  # Greedy decoding is deterministic; these guard the committed weights against regressions.
  from spec_cascade import evaluate_pair  # pylint: disable=g-import-not-at-top
  drafter, verifier, _ = pair
  for task, min_gap in (("debian_ende", 2.0), ("debian_summarize", 1.0)):
    r = evaluate_pair.evaluate(drafter, verifier, task, num_examples=100,
                               vocabulary_path=pretrained.offline_vocab_path())
    assert r["num_examples"] == 100
    assert r["quality_gap"] >= min_gap, r
    assert r["greedy_agreement"] >= 0.45, r


def test_committed_stage_artifacts_load_and_record_their_step():
  """stages/: each artifact loads as its recorded size and says where its run stands."""
  import os
  from spec_cascade import checkpoints, stages
  from spec_cascade.models import get_config
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stages")
  found = 0
  for name, recipe, size in (("verifier", "configs/offline/train_verifier_deep.gin", "mini_deep"),
                             ("drafter", "configs/offline/distill_drafter.gin", "tiny")):
    folder = os.path.join(root, "offline_deep", name)
    if not os.path.isdir(folder):
      continue
    found += 1
    record = stages.stage_record(folder)
    assert record["recipe"] == recipe and record["step"] > 0
    assert stages.start_step(folder, None) == record["step"]
    params, config = checkpoints.load_params(folder)
    assert config == get_config(size)
    assert all(np.isfinite(np.asarray(x)).all() for x in checkpoints.flatten(params).values())
  if not found:
    pytest.skip("no stage artifact committed (the deep pair is finished or not started)")
