"""Every method on decoder-only pairs (and a mixed T5 → decoder-only pair), through the same
engine as T5: the model contract (`decoding.contract`) is the only family-specific code."""
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from pairs import make_decoder_pair, make_pair, random_inputs
from spec_cascade import autogamma, deferral
from spec_cascade.decoding import Bundle, generate
from test_decoding import _chi2_pvalue, check_batch_composition, run_on_devices  # noqa: E402

MAXLEN = 12


@pytest.fixture(scope="module")
def pair():
  return make_decoder_pair()


@pytest.fixture(scope="module")
def prompts():
  """Right-padded prompts of 2..7 tokens (no EOS inside)."""
  return random_inputs(6, length=7, seed=3)


def _reference_greedy(bundle: Bundle, prompt: np.ndarray, max_len: int, eos: int) -> list[int]:
  """Greedy decoding of one unpadded prompt by re-running the whole sequence every step
  (no cache, no offsets): what the engine's prefill + per-row positions must reproduce."""
  seq, out = list(prompt), []
  while len(out) < max_len:
    logits = bundle.model.forward(bundle.params, jnp.asarray([seq], jnp.int32))
    tok = int(np.argmax(np.asarray(logits[0, -1])))
    out.append(tok)
    seq.append(tok)
    if tok == eos:
      break
  return out


def _rows(out):
  return [row[:n].tolist() for row, n in zip(out.tokens, out.lengths)]


@pytest.fixture(scope="module")
def greedy_verifier(pair, prompts):
  _, verifier = pair
  return generate(None, verifier, prompts, method="verifier", temperature=0.0,
                  max_decode_length=MAXLEN)


def test_greedy_verifier_equals_recomputing_each_prompt_alone(pair, prompts, greedy_verifier):
  """Prompts of different lengths in one batch, prefilled and decoded at per-row positions,
  give each row the tokens of the model run on that prompt alone without a cache."""
  _, verifier = pair
  for row, got in zip(prompts, _rows(greedy_verifier)):
    prompt = row[:np.flatnonzero(row)[-1] + 1]
    assert got == _reference_greedy(verifier, prompt, MAXLEN, eos=1)
  assert len(set(greedy_verifier.lengths.tolist())) > 1  # rows end at different lengths


@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_spec_decode_equals_greedy_verifier(pair, prompts, greedy_verifier, batch, gamma):
  drafter, verifier = pair
  out = generate(drafter, verifier, prompts[:batch], method="spec_decode", temperature=0.0,
                 num_draft_tokens=gamma, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, greedy_verifier.tokens[:batch])
  # The drafter is a real one: some drafts are accepted, not all.
  assert 0 < out.counters["accepted"].sum() < out.counters["drafted"].sum()


@pytest.mark.parametrize("method,kw", [
    ("spec_cascade", dict(rule="chow", alpha=0.0)),   # α = 0: Chow always defers
    ("spec_decode_lossy", dict(alpha=0.0)),
    ("bild", dict(fallback_threshold=0.0, rollback_threshold=0.0, bild_max_window=4)),
    ("token_cascade", dict(alpha=0.0)),
    ("oracle", dict(rule="chow", alpha=0.0)),
    ("seq_cascade", dict(alpha=0.0))])                # every row re-decoded by the verifier
def test_every_method_reduces_to_the_greedy_verifier(pair, prompts, greedy_verifier, method,
                                                     kw):
  """Each method at the setting where it must emit the verifier's greedy tokens does, on a
  decoder-only pair (each loop body, both passes of seq_cascade, the token cascade's
  catch-up windows over prompt offsets)."""
  drafter, verifier = pair
  out = generate(drafter, verifier, prompts, method=method, temperature=0.0,
                 num_draft_tokens=3, max_decode_length=MAXLEN, **kw)
  np.testing.assert_array_equal(out.tokens, greedy_verifier.tokens)


def test_spec_cascade_at_alpha_one_is_the_greedy_drafter(pair, prompts):
  drafter, verifier = pair
  d = generate(drafter, None, prompts, method="drafter", temperature=0.0,
               max_decode_length=MAXLEN)
  out = generate(drafter, verifier, prompts, method="spec_cascade", rule="chow", alpha=1.0,
                 temperature=0.0, num_draft_tokens=3, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, d.tokens)
  assert not np.array_equal(d.tokens, generate(None, verifier, prompts, method="verifier",
                                               temperature=0.0,
                                               max_decode_length=MAXLEN).tokens)


def test_sampled_output_independent_of_batch_composition(pair):
  check_batch_composition(pair, MAXLEN)


@pytest.mark.parametrize("method,rule", [("spec_cascade", "token_v3"), ("seq_cascade", None)])
def test_stream_through_slots_equals_one_batch(pair, method, rule):
  """Continuous batching: a freed slot prefills its new prompt (`contract.refill`) and the
  example decodes exactly as in one batch."""
  drafter, verifier = pair
  x = random_inputs(10, seed=6)
  kw = dict(method=method, rule=rule, alpha=0.3, temperature=1.0, num_draft_tokens=3,
            max_decode_length=MAXLEN, seed=2, example_ids=np.arange(40, 50))
  batch = generate(drafter, verifier, x, **kw)
  stream = generate(drafter, verifier, x, slots=3, **kw)
  np.testing.assert_array_equal(stream.tokens, batch.tokens)
  np.testing.assert_array_equal(stream.counters["verifier_calls"],
                                batch.counters["verifier_calls"])
  assert len(set(batch.lengths.tolist())) > 2


def test_eos_id_comes_from_the_config():
  """A model whose EOS is 2 (Llama 2) stops rows at 2, not at T5's 1."""
  drafter, verifier = make_decoder_pair(eos_id=2, eos_gain=3.0, seed=5)
  x = random_inputs(6, seed=1)
  out = generate(drafter, verifier, x, method="spec_decode", temperature=0.0,
                 num_draft_tokens=2, max_decode_length=MAXLEN)
  ends = [row[n - 1] for row, n in zip(out.tokens, out.lengths) if n < MAXLEN]
  assert ends and all(t == 2 for t in ends)
  for row, n in zip(out.tokens, out.lengths):
    assert 2 not in row[:n - 1].tolist() and not row[n:].any()
  other, _ = make_decoder_pair(eos_id=1)
  with pytest.raises(ValueError, match="different EOS ids"):
    generate(other, verifier, x, method="spec_decode", max_decode_length=4)


def test_mixed_pair_t5_drafter_decoder_only_verifier():
  """A T5 drafter reads the ids as encoder input, a decoder-only verifier as its prompt;
  with one vocabulary, greedy SpecDecode still emits exactly the verifier's tokens."""
  t5_drafter, _ = make_pair(vocab=64)
  _, verifier = make_decoder_pair(vocab=64)
  x = random_inputs(5, seed=9)
  want = generate(None, verifier, x, method="verifier", temperature=0.0,
                  max_decode_length=MAXLEN)
  got = generate(t5_drafter, verifier, x, method="spec_decode", temperature=0.0,
                 num_draft_tokens=3, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(got.tokens, want.tokens)


# --- distributions ---------------------------------------------------------------------------

def _exact_distribution(pair, prompt, rule, alpha, max_len):
  """P(output) under token-by-token sampling from π = rule(q, p) at T = 1, by enumeration
  with both models re-run over prompt + prefix."""
  drafter, verifier = pair
  probs, frontier = {}, [((), 1.0)]
  while frontier:
    seqs = jnp.asarray([list(prompt) + list(p) for p, _ in frontier], jnp.int32)
    q = drafter.model.forward(drafter.params, seqs)[:, -1]
    p = verifier.model.forward(verifier.params, seqs)[:, -1]
    nxt = []
    for i, (prefix, w) in enumerate(frontier):
      pi, _ = deferral.target(rule, q[i], p[i], alpha, None, 1.0)
      for tok, pr in enumerate(np.asarray(pi, np.float64)):
        seq = prefix + (tok,)
        if tok == 1 or len(seq) == max_len:
          probs[seq] = probs.get(seq, 0.0) + w * pr
        else:
          nxt.append((seq, w * pr))
    frontier = nxt
  return probs


@pytest.mark.slow
@pytest.mark.parametrize("method,rule,alpha", [
    ("spec_decode", None, 0.0), ("spec_cascade", "token_v3", 0.3),
    ("spec_cascade", "chow", 0.4), ("token_cascade", "chow", 0.4)])
def test_output_distribution_matches_token_level_target(method, rule, alpha):
  """Sequences from a decoder-only pair are distributed as token-by-token sampling from the
  rule's target π (χ² over every sequence of ≤ 3 tokens, 30,000 samples)."""
  pair = make_decoder_pair(vocab=5, emb=16, seed=7, perturb=2.0, eos_gain=1.0,
                           family="gemma")
  n, max_len, prompt = 30000, 3, [2, 3, 4]
  target_rule = {"spec_decode": "verifier"}.get(method, rule)
  exact = _exact_distribution(pair, prompt, target_rule, alpha, max_len)
  assert abs(sum(exact.values()) - 1) < 1e-5
  x = np.repeat(np.asarray([prompt + [0]], np.int32), n, axis=0)
  out = generate(*pair, x, method=method, rule=rule, alpha=alpha, temperature=1.0,
                 num_draft_tokens=2, max_decode_length=max_len, seed=11)
  samples = [tuple(row[:l]) for row, l in zip(out.tokens.tolist(), out.lengths.tolist())]
  assert _chi2_pvalue(samples, exact, n) > 1e-4


def test_decoder_only_counters_match_t5_semantics(pair, prompts):
  """Counters mean the same on both families: one verifier call per block, drafted =
  accepted + the rejected blocks' shortfall, output tokens = lengths."""
  drafter, verifier = pair
  out = generate(drafter, verifier, prompts, method="spec_decode", temperature=1.0,
                 num_draft_tokens=3, max_decode_length=MAXLEN, seed=1)
  c = out.counters
  np.testing.assert_array_equal(c["verifier_calls"], c["blocks"])
  np.testing.assert_array_equal(c["output_tokens"], out.lengths)
  assert (c["accepted"] <= c["drafted"]).all() and (c["drafted"] == 3 * c["blocks"]).all()


def test_auto_gamma_on_a_decoder_only_pair(pair, prompts, greedy_verifier):
  """num_draft_tokens='auto' times the decoder-only pair through the contract and keeps the
  greedy output exactly the verifier's."""
  autogamma.clear_cache()
  drafter, verifier = pair
  out = generate(drafter, verifier, prompts, method="spec_decode", num_draft_tokens="auto",
                 temperature=0.0, max_decode_length=MAXLEN, draft_candidates=(1, 3))
  np.testing.assert_array_equal(out.tokens, greedy_verifier.tokens)
  choice = out.gamma_choice
  assert set(choice.seconds) == {0, 1, 3} and choice.gamma == autogamma.pick(choice.seconds)
  assert all(0.0 < a < 1.0 for a in choice.acceptance.values())


@pytest.mark.parametrize("threshold", [0.2, 0.6])
def test_dynamic_draft_length_on_a_decoder_only_pair(pair, prompts, greedy_verifier, threshold):
  """draft_confidence stops a block's drafting early at per-row offsets into the prompt cache;
  greedy SpecDecode still equals the greedy verifier."""
  drafter, verifier = pair
  out = generate(drafter, verifier, prompts, method="spec_decode", num_draft_tokens=4,
                 temperature=0.0, max_decode_length=MAXLEN, draft_confidence=threshold)
  np.testing.assert_array_equal(out.tokens, greedy_verifier.tokens)
  c = out.counters
  assert (c["blocks"] <= c["drafted"]).all() and (c["drafted"] <= 4 * c["blocks"]).all()
  assert c["drafted"].sum() < 4 * c["blocks"].sum()  # some blocks stopped early


def decoder_mesh_results(meshes) -> dict:
  """{run: tokens as lists} of a decoder-only pair on a data mesh and a data × model mesh
  (None, None: one device). Run in this process for one device and, through
  `_DECODER_ON_DEVICES`, in a process with 4."""
  d, v = make_decoder_pair()
  x = random_inputs(6, length=7, seed=3)
  kw = dict(temperature=1.0, num_draft_tokens=3, max_decode_length=12, seed=1)
  res = {}
  for name, mesh in zip(("data", "data_model"), meshes):
    res[name] = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.2,
                         mesh=mesh, **kw).tokens.tolist()
    if name == "data":  # streams split examples over 'data' only (check_stream_mesh)
      # Each refilled slot prefills its prompt on its own device.
      res["stream"] = generate(d, v, random_inputs(10, seed=6), method="spec_decode",
                               slots=4, mesh=mesh, **kw).tokens.tolist()
    # Batch 1 (padded to the mesh's data size inside generate).
    res[name + "_b1"] = generate(d, v, x[:1], method="spec_decode", mesh=mesh,
                                 **kw).tokens.tolist()
  return res


_DECODER_ON_DEVICES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax
    from spec_cascade import parallel
    from test_decoder_engine import decoder_mesh_results
    assert len(jax.devices()) == {n}, jax.devices()
    print(json.dumps(decoder_mesh_results([parallel.make_mesh(), parallel.make_mesh(model=2)])))
""")


@pytest.mark.slow
def test_decoder_only_outputs_identical_on_one_and_four_devices():
  """Data-parallel and data × model-parallel meshes (the logical-axis rules shard the
  decoder-only parameters) give the tokens of one device."""
  assert run_on_devices(4, _DECODER_ON_DEVICES) == decoder_mesh_results([None, None])
