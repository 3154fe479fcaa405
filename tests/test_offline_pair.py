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
