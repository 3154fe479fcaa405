"""A drafter that shares the verifier's encoder: each input is encoded once, outputs unchanged."""
import dataclasses
import functools

import flax
import jax
import numpy as np
import pytest

from pairs import make_decoder_pair, make_pair, random_inputs
from spec_cascade import decoding
from spec_cascade.decoding import Bundle, contract, generate, loops
from spec_cascade.models import T5Model, grow

MAXLEN = 12


@pytest.fixture(scope="module")
def pair():
  # make_pair's verifier is its drafter plus one decoder layer: same embedding and encoder.
  return make_pair()


def _dots(jaxpr) -> int:
  return str(jaxpr).count("dot_general")


def test_a_pair_with_the_same_encoder_encodes_once(pair):
  drafter, verifier = pair
  assert contract.shares_encoder(drafter, verifier)
  x = random_inputs(4)
  cfg = decoding.DecodeConfig(method="spec_decode", temperature=0.0, max_decode_length=MAXLEN)
  counts = {}
  for shared in (False, True):
    spec = dataclasses.replace(cfg.spec, shared_encoder=shared)
    counts[shared] = _dots(jax.make_jaxpr(functools.partial(
        loops.decode, drafter.model, verifier.model, spec))(
            drafter.params, verifier.params, x, np.arange(4, dtype=np.int32), np.int32(0),
            cfg.knobs))
  encoder = _dots(jax.make_jaxpr(drafter.model.encode)(drafter.params, x))
  assert encoder > 0
  assert counts[True] == counts[False] - encoder, (counts, encoder)


def _same(a, b):
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  for k in a.counters:
    np.testing.assert_array_equal(a.counters[k], b.counters[k], err_msg=k)


@pytest.mark.parametrize("method,rule,temperature,slots", [
    ("spec_decode", None, 0.0, None), ("spec_decode", None, 1.0, 2),
    ("spec_cascade", "token_v3", 1.0, None), ("seq_cascade", "chow", 1.0, None),
    ("seq_cascade", "chow", 1.0, 3), ("bild", None, 0.0, None),
    ("token_cascade", "chow", 1.0, None)])
def test_sharing_changes_no_output(pair, method, rule, temperature, slots):
  drafter, verifier = pair
  x = random_inputs(6, seed=3)
  kw = dict(method=method, rule=rule, alpha=0.5, temperature=temperature, num_draft_tokens=3,
            max_decode_length=MAXLEN, seed=1, slots=slots)
  _same(generate(drafter, verifier, x, **kw),
        generate(drafter, verifier, x, share_encoder=False, **kw))


def test_a_drafter_cut_from_the_verifier_shares_its_encoder(pair):
  """models.grow.keep_layers keeps the embedding and the encoder: the cut drafter shares
  them until training changes them, and then each model encodes for itself."""
  _, verifier = pair
  cfg, params = grow.keep_layers(verifier.params, verifier.model.config, decoder_layers=[0])
  cut = Bundle(T5Model(cfg), params)
  assert contract.shares_encoder(cut, verifier)
  x = random_inputs(3, seed=5)
  kw = dict(method="spec_decode", temperature=0.0, num_draft_tokens=2, max_decode_length=MAXLEN)
  out = generate(cut, verifier, x, **kw)
  np.testing.assert_array_equal(
      out.tokens, generate(cut, verifier, x, method="verifier", temperature=0.0,
                           max_decode_length=MAXLEN).tokens)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  name = next(k for k in flat if k.startswith("encoder/") and k.endswith("kernel"))
  flat[name] = np.asarray(flat[name]) * 1.01  # as one training step on the encoder would
  trained = Bundle(T5Model(cfg), flax.traverse_util.unflatten_dict(flat, sep="/"))
  assert not contract.shares_encoder(trained, verifier)
  _same(generate(trained, verifier, x, **kw),
        generate(trained, verifier, x, share_encoder=False, **kw))


def test_what_is_not_shared():
  d, v = make_pair(seed=0)
  other_d, _ = make_pair(seed=7)  # an encoder of the same shape, other values
  assert not contract.shares_encoder(other_d, v)
  wide = make_pair(emb=48)[0]  # another width
  assert not contract.shares_encoder(wide, v)
  assert not contract.shares_encoder(None, v) and not contract.shares_encoder(d, None)
  dd, dv = make_decoder_pair()
  assert not contract.shares_encoder(dd, dv)  # decoder-only models have no encoder
