"""Decoding engine: exactness of every method against its definition, counters, invariance."""
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from device_env import cpu_devices_env
from pairs import make_pair, random_inputs
from spec_cascade import decoding, deferral, programs
from spec_cascade.decoding import generate

MAXLEN = 16


@pytest.fixture(scope="module")
def pair():
  return make_pair()


@pytest.fixture(scope="module")
def greedy_refs(pair):
  drafter, verifier = pair
  x = random_inputs(8)
  v = generate(drafter, verifier, x, method="verifier", temperature=0.0,
               max_decode_length=MAXLEN)
  d = generate(drafter, verifier, x, method="drafter", temperature=0.0,
               max_decode_length=MAXLEN)
  return x, d, v


def test_rows_end_at_different_lengths_and_pad_after_eos(greedy_refs):
  _, d, v = greedy_refs
  for out in (d, v):
    assert len(set(out.lengths.tolist())) > 1, out.lengths
    for row, n in enumerate(out.lengths):
      if n < MAXLEN:
        assert out.tokens[row, n - 1] == decoding.EOS_ID
      assert (out.tokens[row, n:] == 0).all()
      assert (out.tokens[row, :n - 1] != decoding.EOS_ID).all()


# Every batch size and every γ appear (each pair is one compilation).
@pytest.mark.parametrize("batch,gamma", [(1, 1), (3, 3), (8, 5), (8, 7), (1, 7), (3, 1)])
def test_greedy_spec_decode_equals_greedy_verifier(pair, greedy_refs, batch, gamma):
  drafter, verifier = pair
  x, _, v = greedy_refs
  out = generate(drafter, verifier, x[:batch], method="spec_decode", temperature=0.0,
                 num_draft_tokens=gamma, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, v.tokens[:batch])
  np.testing.assert_array_equal(out.lengths, v.lengths[:batch])
  assert out.counters["accepted"].sum() > 0  # the pair agrees often enough to test blocks


@pytest.mark.parametrize("method,gamma,temperature", [
    ("spec_decode", 1, 0.0), ("spec_decode", 4, 0.0), ("spec_decode", 3, 1.0),
    ("spec_cascade", 3, 1.0)])
def test_self_drafting_accepts_every_draft(pair, greedy_refs, method, gamma, temperature):
  # With the verifier as its own drafter every draft must be accepted; a drafter cache
  # missing or corrupting any position (e.g. the entry SpecDecode writes lazily in the next
  # block) would show up as rejections.
  _, verifier = pair
  x, _, v = greedy_refs
  out = generate(verifier, verifier, x, method=method, rule="chow" if method == "spec_cascade"
                 else None, alpha=0.0, temperature=temperature, num_draft_tokens=gamma,
                 max_decode_length=MAXLEN, seed=2)
  c = out.counters
  assert c["drafted"].sum() > 4 * len(x)
  assert (c["rejected"] == 0).all() and (c["accepted"] == c["drafted"]).all(), c
  if temperature == 0.0:
    np.testing.assert_array_equal(out.tokens, v.tokens)


@pytest.mark.parametrize("rule", ["chow", "diff", "opt", "token_v1", "token_v2", "token_v3"])
def test_spec_cascade_edge_alphas_recover_drafter_and_verifier(pair, greedy_refs, rule):
  drafter, verifier = pair
  x, d, v = greedy_refs
  spec = deferral.get_rule(rule)
  to_drafter = np.clip(spec.drafter_alpha, -1e6, 1e6)
  to_verifier = np.clip(spec.specdecode_alpha, -1e6, 1e6)
  out_d = generate(drafter, verifier, x, method="spec_cascade", rule=rule, alpha=to_drafter,
                   temperature=0.0, num_draft_tokens=3, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out_d.tokens, d.tokens)
  assert (out_d.counters["rejected"] == 0).all()
  # (chow at α = 0 would keep q̃ only where max q = 1 exactly: never for these models.)
  out_v = generate(drafter, verifier, x, method="spec_cascade", rule=rule, alpha=to_verifier,
                   temperature=0.0, num_draft_tokens=3, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out_v.tokens, v.tokens)


def test_lossy_at_zero_is_spec_decode(pair, greedy_refs):
  drafter, verifier = pair
  x, _, v = greedy_refs
  out = generate(drafter, verifier, x, method="spec_decode_lossy", alpha=0.0, temperature=0.0,
                 max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, v.tokens)


def test_bild_with_strict_rollback_equals_greedy_verifier(pair, greedy_refs):
  drafter, verifier = pair
  x, _, v = greedy_refs
  # rollback threshold 0 rejects every draft unless p(draft) = 1: the verifier decides.
  out = generate(drafter, verifier, x, method="bild", fallback_threshold=0.0,
                 rollback_threshold=0.0, bild_max_window=4, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, v.tokens)


def test_bild_lenient_rollback_equals_greedy_drafter_when_never_falling_back(pair, greedy_refs):
  drafter, verifier = pair
  x, d, _ = greedy_refs
  out = generate(drafter, verifier, x, method="bild", fallback_threshold=0.0,
                 rollback_threshold=1e9, bild_max_window=4, max_decode_length=MAXLEN)
  # Every draft kept; the token after a full window is the verifier's, so compare the drafts.
  c = out.counters
  assert (c["rejected"] == 0).all() and (c["drafted"] > 0).all()


def test_lossy_at_t0_is_lenient_greedy_acceptance(pair, greedy_refs):
  """Lossy SpecDecode at T = 0: α = 0 is greedy SpecDecode (the verifier's tokens); at α = 0.9
  every emitted token x has p(x | prefix) ≥ 0.1·max p under the verifier, some are not its
  argmax, and a larger α accepts more drafts."""
  drafter, verifier = pair
  x, _, v = greedy_refs
  kw = dict(method="spec_decode_lossy", temperature=0.0, num_draft_tokens=3,
            max_decode_length=MAXLEN)
  strict = generate(drafter, verifier, x, alpha=0.0, **kw)
  np.testing.assert_array_equal(strict.tokens, v.tokens)
  loose = generate(drafter, verifier, x, alpha=0.9, **kw)
  dec = np.pad(loose.tokens[:, :-1], ((0, 0), (1, 0)))
  logits = np.asarray(verifier.model.forward(verifier.params, jnp.asarray(x), jnp.asarray(dec)))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  mine = np.take_along_axis(p, loose.tokens[..., None], axis=-1)[..., 0]
  valid = np.arange(MAXLEN)[None, :] < loose.lengths[:, None]
  assert (mine >= 0.1 * p.max(-1) - 1e-6)[valid].all()
  assert (mine < p.max(-1) - 1e-6)[valid].any()  # some lenient (non-argmax) tokens
  assert loose.counters["deferred"].sum() < loose.counters["output_tokens"].sum()
  rate = lambda o: o.counters["accepted"].sum() / o.counters["drafted"].sum()
  assert rate(loose) > rate(strict)


@pytest.mark.parametrize("window", [1, 4])
def test_bild_keeping_every_window_with_drafter_equal_verifier_is_greedy_verifier(
    pair, greedy_refs, window):
  """Drafter = verifier, no fallback, no rollback: every block keeps its whole window, every
  draft is the verifier's argmax, so BiLD must decode the verifier's greedy tokens exactly
  (the drafter's cache must hold the last draft of each window)."""
  _, verifier = pair
  x, _, v = greedy_refs
  out = generate(verifier, verifier, x, method="bild", fallback_threshold=0.0,
                 rollback_threshold=1e9, bild_max_window=window, max_decode_length=MAXLEN)
  np.testing.assert_array_equal(out.tokens, v.tokens)
  np.testing.assert_array_equal(out.lengths, v.lengths)
  c = out.counters
  assert (c["rejected"] == 0).all() and (c["bonus_tokens"] > 0).any()


@pytest.mark.parametrize("method,rule", [("spec_decode", None), ("spec_cascade", "token_v3"),
                                         ("spec_decode_lossy", None)])
def test_counters_add_up(pair, method, rule):
  drafter, verifier = pair
  gamma = 4
  x = random_inputs(6, seed=3)
  out = generate(drafter, verifier, x, method=method, rule=rule, alpha=0.3, temperature=1.0,
                 num_draft_tokens=gamma, max_decode_length=MAXLEN, seed=5)
  c = out.counters
  np.testing.assert_array_equal(c["verifier_calls"], c["blocks"])
  np.testing.assert_array_equal(c["drafted"], gamma * c["blocks"])
  # SpecDecode never reads q_γ, so it skips the drafter step on the last draft.
  steps_per_block = gamma if method == "spec_decode" else gamma + 1
  np.testing.assert_array_equal(c["drafter_steps"], steps_per_block * c["blocks"])
  np.testing.assert_array_equal(c["rejected"] + c["bonus_tokens"], c["blocks"])
  np.testing.assert_array_equal(c["output_tokens"], out.lengths)
  # Emitted = accepted + one per block, except where EOS / max length cut the last block.
  assert (c["output_tokens"] <= c["accepted"] + c["blocks"]).all()
  assert (c["output_tokens"] > c["accepted"] + c["blocks"] - 1 - gamma - 1).all()
  assert (c["accepted"] <= c["drafted"]).all()


def test_token_cascade_counts_sequential_calls(pair):
  drafter, verifier = pair
  x = random_inputs(5, seed=2)
  out = generate(drafter, verifier, x, method="token_cascade", alpha=0.5, temperature=1.0,
                 max_decode_length=MAXLEN)
  c = out.counters
  np.testing.assert_array_equal(c["drafter_steps"], out.lengths)
  # Chow's deferrals are exactly the sequential verifier calls and the verifier-side tokens.
  np.testing.assert_array_equal(c["verifier_sequential_calls"], c["deferred"].astype(int))
  assert (c["verifier_calls"] >= c["verifier_sequential_calls"]).all()


@pytest.mark.parametrize("window", [2, 5])
def test_token_cascade_catches_up_only_when_a_row_defers(pair, window):
  """Greedy Chow with a short verifier window: every token is the argmax of the model Chow
  picks from the full-sequence logits (so the verifier's cache, caught up over several windows
  when a row defers late, is right); a row is charged its own calls only (alone = in the
  batch); no deferral, no verifier call at all."""
  drafter, verifier = pair
  x = random_inputs(6, seed=12)
  alpha = 0.9  # this random drafter is rarely sure: Chow defers seldom
  kw = dict(method="token_cascade", temperature=0.0, max_decode_length=MAXLEN,
            token_cascade_window=window)
  out = generate(drafter, verifier, x, alpha=alpha, **kw)
  dec = jnp.asarray(np.pad(out.tokens[:, :-1], ((0, 0), (1, 0))))
  q = np.asarray(drafter.model.forward(drafter.params, jnp.asarray(x), dec))
  p = np.asarray(verifier.model.forward(verifier.params, jnp.asarray(x), dec))
  qmax = np.max(np.exp(q - q.max(-1, keepdims=True)) /
                np.exp(q - q.max(-1, keepdims=True)).sum(-1, keepdims=True), axis=-1)
  defer = qmax < 1.0 - alpha
  want = np.where(defer, p.argmax(-1), q.argmax(-1))
  valid = np.arange(MAXLEN)[None, :] < out.lengths[:, None]
  np.testing.assert_array_equal(out.tokens[valid], want[valid])
  c = out.counters
  np.testing.assert_array_equal(c["verifier_sequential_calls"], (defer & valid).sum(1))
  assert (c["verifier_calls"] > c["verifier_sequential_calls"]).any()  # some catch-ups
  for row in range(len(x)):
    alone = generate(drafter, verifier, x[row:row + 1], alpha=alpha, **kw)
    for name in ("verifier_calls", "verifier_sequential_calls", "drafter_steps"):
      assert alone.counters[name][0] == c[name][row], (row, name)
  never = generate(drafter, verifier, x, alpha=1.0, **kw)
  assert never.counters["verifier_calls"].sum() == 0


# --- distributions ---------------------------------------------------------------------------

def _exact_sequence_distribution(pair, x, rule, alpha, temperature, max_len):
  """P(output) under token-by-token sampling from π = rule(q, p), by enumeration."""
  drafter, verifier = pair
  vocab = drafter.model.config.vocab_size
  probs = {}
  frontier = [((), 1.0)]
  while frontier:
    prefixes = [p for p, _ in frontier]
    dec = np.zeros((len(prefixes), max_len), np.int32)
    for i, p in enumerate(prefixes):
      dec[i, 1:len(p) + 1] = p
    enc = np.repeat(x, len(prefixes), axis=0)
    q = drafter.model.forward(drafter.params, jnp.asarray(enc), jnp.asarray(dec))
    pp = verifier.model.forward(verifier.params, jnp.asarray(enc), jnp.asarray(dec))
    nxt = []
    for i, (p, w) in enumerate(frontier):
      t = len(p)
      pi, _ = deferral.target(rule, q[i, t], pp[i, t], alpha, None, temperature)
      pi = np.asarray(pi, np.float64)
      for tok in range(vocab):
        seq, pr = p + (tok,), w * pi[tok]
        if tok == decoding.EOS_ID or len(seq) == max_len:
          probs[seq] = probs.get(seq, 0.0) + pr
        else:
          nxt.append((seq, pr))
    frontier = nxt
  return probs


def _chi2_pvalue(samples, exact, n):
  keys = sorted(exact, key=lambda k: -exact[k])
  expected = np.array([exact[k] * n for k in keys])
  counts = {}
  for s in samples:
    counts[s] = counts.get(s, 0) + 1
  assert set(counts) <= set(exact), "sampled an impossible sequence"
  observed = np.array([counts.get(k, 0) for k in keys], float)
  # Pool cells with expected count < 5 into one.
  big = expected >= 5
  obs = np.append(observed[big], observed[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  keep = exp > 0
  chi2 = (((obs - exp) ** 2) / exp)[keep].sum()
  return stats.chi2.sf(chi2, keep.sum() - 1)


@pytest.fixture(scope="module")
def tiny_vocab_pair():
  return make_pair(vocab=5, emb=16, seed=7, perturb=2.0, eos_gain=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method,rule,alpha", [
    ("token_cascade", "chow", 0.4), ("spec_cascade", "chow", 0.4), ("oracle", "chow", 0.4),
    ("spec_cascade", "token_v3", 0.3), ("spec_decode", None, 0.0),
    ("spec_decode_lossy", None, 0.3)])
def test_output_distribution_matches_token_level_target(tiny_vocab_pair, method, rule, alpha):
  """Every method emits sequences distributed as token-by-token sampling from π."""
  n, max_len = 30000, 3
  x = np.array([[2, 3, 4, 2]], np.int32)
  target_rule = {"spec_decode": "verifier", "spec_decode_lossy": "lossy"}.get(method, rule)
  exact = _exact_sequence_distribution(tiny_vocab_pair, x, target_rule, alpha, 1.0, max_len)
  assert abs(sum(exact.values()) - 1) < 1e-5
  drafter, verifier = tiny_vocab_pair
  out = generate(drafter, verifier, np.repeat(x, n, axis=0), method=method, rule=rule,
                 alpha=alpha, temperature=1.0, num_draft_tokens=2, max_decode_length=max_len,
                 seed=11)
  samples = [tuple(row[:l]) for row, l in zip(out.tokens.tolist(), out.lengths.tolist())]
  assert _chi2_pvalue(samples, exact, n) > 1e-4


# --- invariance and compilation ----------------------------------------------------------------

def test_sampled_output_independent_of_batch_composition(pair):
  check_batch_composition(pair, MAXLEN)


def check_batch_composition(pair, max_len: int):
  """A row's tokens and counters are the same alone, in part of a batch or in all of it."""
  drafter, verifier = pair
  x = random_inputs(8, seed=4)
  kw = dict(method="spec_cascade", rule="token_v3", alpha=0.2, temperature=1.0,
            num_draft_tokens=3, max_decode_length=max_len, seed=3)
  full = generate(drafter, verifier, x, example_ids=np.arange(100, 108), **kw)
  for lo, hi in [(0, 1), (2, 5), (5, 8)]:
    part = generate(drafter, verifier, x[lo:hi], example_ids=np.arange(100 + lo, 100 + hi), **kw)
    np.testing.assert_array_equal(part.tokens, full.tokens[lo:hi])
    for name in decoding.COUNTER_FIELDS:
      # `deferred` sums float weights: equal up to float summation order.
      np.testing.assert_allclose(part.counters[name], full.counters[name][lo:hi], rtol=1e-6)


def test_stage_sizes():
  assert decoding.stage_sizes(32, True) == (32, 8)
  assert decoding.stage_sizes(18, True) == (18, 4)
  assert decoding.stage_sizes(16, True) == (16, 4)
  assert decoding.stage_sizes(15, True) == (15,)
  assert decoding.stage_sizes(8, True) == (8,)
  assert decoding.stage_sizes(1, True) == (1,)
  assert decoding.stage_sizes(32, False) == (32,)


def _assert_same_outputs(a, b):
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  for name in decoding.COUNTER_FIELDS:
    # Integer counters match exactly; `deferred` sums float32 weights, whose last bits depend
    # on the batch a row was computed in (rows are padded to bucketed shapes).
    np.testing.assert_allclose(a.counters[name], b.counters[name], rtol=1e-5, err_msg=name)


def _shrunk_and_whole(pair, method, rule, temperature, batch):
  drafter, verifier = pair
  x = random_inputs(batch, seed=6)
  kw = dict(method=method, rule=rule, alpha=0.3, temperature=temperature, num_draft_tokens=3,
            max_decode_length=MAXLEN, seed=2, example_ids=np.arange(40, 40 + batch))
  return (generate(drafter, verifier, x, **kw),
          generate(drafter, verifier, x, shrink_batch=False, **kw))


def test_shrinking_the_batch_changes_no_output(pair):
  """Rows gathered into a quarter-size batch (16 → 4) once most are done keep their tokens,
  counters and random draws (keys move with the rows)."""
  shrunk, whole = _shrunk_and_whole(pair, "spec_cascade", "token_v3", 1.0, batch=16)
  _assert_same_outputs(shrunk, whole)
  # The second stage runs only once at most 4 rows are left with work to do.
  steps = np.sort(whole.counters["blocks"])[::-1]
  assert steps[0] > steps[4], steps


@pytest.fixture
def shrink_to_six(monkeypatch):
  """Stages (8, 6): rows move to the second stage as soon as two are done, so every method
  (also those whose rows mostly run to the length cap) runs both stages."""
  monkeypatch.setattr(decoding.loops, "stage_sizes", lambda b, shrink: (b, 6) if shrink else (b,))
  programs.PROGRAMS.clear()  # programs traced with the real stages
  yield
  programs.PROGRAMS.clear()


@pytest.mark.parametrize("alpha", [0.0, 0.975, 1.0])
def test_seq_cascade_streams_the_deferred_examples_only(pair, alpha):
  """seq_cascade through 3 slots: the drafter streams every example, the verifier only the
  deferred ones (all at α = 0, 4 of 11 at α = 0.975, none at α = 1); the same tokens, counters
  and draws as one batch, and no verifier call for an example that was not deferred."""
  drafter, verifier = pair
  x = random_inputs(11, seed=9)
  kw = dict(method="seq_cascade", alpha=alpha, temperature=1.0, max_decode_length=MAXLEN,
            seed=5, example_ids=np.arange(20, 31))
  stream = generate(drafter, verifier, x, slots=3, **kw)
  _assert_same_outputs(stream, generate(drafter, verifier, x, **kw))
  deferred = stream.counters["deferred"] > 0
  np.testing.assert_array_equal(stream.counters["verifier_calls"] > 0, deferred)
  assert deferred.sum() == {0.0: 11, 0.975: 4, 1.0: 0}[alpha]  # both kinds, all, none
  np.testing.assert_array_equal(stream.counters["drafter_steps"] > 0, True)


@pytest.mark.slow
@pytest.mark.parametrize("method,rule,temperature", [
    ("seq_cascade", None, 0.0), ("verifier", None, 0.0), ("drafter", None, 1.0),
    ("spec_decode", None, 0.0),
    ("spec_decode", None, 1.0), ("spec_cascade", "token_v3", 1.0), ("token_cascade", None, 1.0),
    ("oracle", "opt", 1.0), ("seq_cascade", None, 1.0), ("bild", None, 0.0)])
def test_every_method_keeps_its_outputs_across_stages(pair, shrink_to_six, method, rule,
                                                      temperature):
  shrunk, whole = _shrunk_and_whole(pair, method, rule, temperature, batch=8)
  _assert_same_outputs(shrunk, whole)
  steps = np.sort(whole.counters["blocks"])[::-1]
  assert steps[0] > steps[6], steps


def test_stream_through_slots_equals_one_batch(pair):
  """Continuous batching: 12 examples through 4 slots, refilled as rows finish, give every
  example the tokens, counters and random draws it gets in one batch of 12."""
  drafter, verifier = pair
  x = random_inputs(12, seed=6)
  kw = dict(method="spec_cascade", rule="token_v3", alpha=0.3, temperature=1.0,
            num_draft_tokens=3, max_decode_length=MAXLEN, seed=2, example_ids=np.arange(40, 52))
  batch = generate(drafter, verifier, x, **kw)
  stream = generate(drafter, verifier, x, slots=4, **kw)
  _assert_same_outputs(stream, batch)
  assert len(set(batch.lengths.tolist())) > 2  # slots really are refilled at different steps


@pytest.mark.slow
@pytest.mark.parametrize("method,rule,temperature", [
    ("verifier", None, 0.0), ("drafter", None, 1.0), ("spec_decode", None, 0.0),
    ("spec_decode", None, 1.0), ("spec_decode_lossy", None, 1.0), ("token_cascade", None, 1.0),
    ("oracle", "opt", 1.0), ("bild", None, 0.0)])
def test_every_one_loop_method_streams(pair, method, rule, temperature):
  drafter, verifier = pair
  x = random_inputs(10, seed=3)
  kw = dict(method=method, rule=rule, alpha=0.3, temperature=temperature, num_draft_tokens=4,
            max_decode_length=MAXLEN, seed=7)
  _assert_same_outputs(generate(drafter, verifier, x, slots=3, **kw),
                       generate(drafter, verifier, x, **kw))


def test_stream_tail_shrinks_with_unchanged_outputs(pair, monkeypatch):
  """20 examples through 16 slots: once the queue is empty and at most 4 slots are busy, the
  last examples finish in a batch of 4 (the real stage policy); outputs as in one batch."""
  drafter, verifier = pair
  started = []
  run = decoding.loops.run_stages
  monkeypatch.setattr(decoding.loops, "run_stages", lambda *a, **k: started.append(
      k.get("started", False)) or run(*a, **k))
  programs.PROGRAMS.clear()
  x = random_inputs(20, seed=8)
  kw = dict(method="spec_cascade", rule="token_v3", alpha=0.3, temperature=1.0,
            num_draft_tokens=3, max_decode_length=MAXLEN, seed=4)
  stream = generate(drafter, verifier, x, slots=16, **kw)
  assert started == [True]  # traced: the tail goes through the shrinking stage
  unshrunk = generate(drafter, verifier, x, slots=16, shrink_batch=False, **kw)
  assert started == [True]  # no tail stage without shrink_batch
  programs.PROGRAMS.clear()
  _assert_same_outputs(stream, generate(drafter, verifier, x, shrink_batch=False, **kw))
  _assert_same_outputs(unshrunk, stream)


@pytest.mark.slow
@pytest.mark.parametrize("method,rule,temperature", [
    ("verifier", None, 0.0), ("spec_decode", None, 1.0), ("spec_cascade", "token_v3", 1.0),
    ("token_cascade", None, 1.0), ("bild", None, 0.0)])
def test_stream_tail_keeps_outputs_for_every_method(pair, shrink_to_six, method, rule,
                                                     temperature):
  """Stages (8, 6): a stream of 12 through 8 slots hands its last 6 rows to a second stage."""
  drafter, verifier = pair
  x = random_inputs(12, seed=5)
  kw = dict(method=method, rule=rule, alpha=0.3, temperature=temperature, num_draft_tokens=3,
            max_decode_length=MAXLEN, seed=6)
  _assert_same_outputs(generate(drafter, verifier, x, slots=8, **kw),
                       generate(drafter, verifier, x, shrink_batch=False, **kw))


def test_alpha_temperature_sweep_compiles_once(pair):
  drafter, verifier = pair
  x = random_inputs(2)
  kw = dict(method="spec_cascade", rule="opt", num_draft_tokens=2, max_decode_length=6)
  programs.PROGRAMS.clear()
  generate(drafter, verifier, x, alpha=0.0, temperature=1.0, **kw)
  assert (len(programs.PROGRAMS), programs.PROGRAMS.compiled_count()) == (1, 1)
  for alpha, temp in [(0.5, 1.0), (-2.0, 0.5), (3.0, 0.0)]:
    generate(drafter, verifier, x, alpha=alpha, temperature=temp, seed=int(alpha * 10), **kw)
  assert (len(programs.PROGRAMS), programs.PROGRAMS.compiled_count()) == (1, 1)


@pytest.mark.parametrize("method,rules", [
    ("spec_cascade", ("chow", "lossy", "token_v3")), ("oracle", ("chow", "diff"))])
def test_a_rule_set_compiles_once_and_decodes_each_rule_as_its_own_program(pair, method, rules):
  drafter, verifier = pair
  x = random_inputs(3, seed=4)
  kw = dict(method=method, alpha=0.3, num_draft_tokens=3, max_decode_length=MAXLEN, seed=1)
  for temperature in (0.0, 1.0):
    own = {r: generate(drafter, verifier, x, rule=r, temperature=temperature, **kw)
           for r in rules}
    programs.PROGRAMS.clear()
    for r in rules:
      shared = generate(drafter, verifier, x, rule=r, rule_set=rules,
                        temperature=temperature, **kw)
      _assert_same_outputs(shared, own[r])
    assert (len(programs.PROGRAMS), programs.PROGRAMS.compiled_count()) == (1, 1)
  # The rules really differ here (in tokens or in what they deferred), so the run-time choice
  # is not a no-op.
  assert len({(own[r].tokens.tobytes(), own[r].counters["deferred"].tobytes())
              for r in rules}) == len(rules)


def test_keyword_calls_build_their_config_once(pair):
  drafter, verifier = pair
  x = random_inputs(2)
  from spec_cascade.decoding import api  # pylint: disable=g-import-not-at-top
  api._cached_config.cache_clear()  # pylint: disable=protected-access
  kw = dict(method="spec_cascade", rule="chow", alpha=0.3, num_draft_tokens=2,
            max_decode_length=6, temperature=0.0)
  first = generate(drafter, verifier, x, **kw)
  again = generate(drafter, verifier, x, **kw)
  info = api._cached_config.cache_info()  # pylint: disable=protected-access
  assert (info.misses, info.hits) == (1, 1)
  _assert_same_outputs(first, again)
  # An unhashable setting (a list) is built each call, with the same result.
  listed = generate(drafter, verifier, x, rule_set=["chow", "diff"], **kw)
  _assert_same_outputs(first, listed)
  with pytest.raises(ValueError, match="alpha"):  # errors are not cached away
    generate(drafter, verifier, x, **{**kw, "alpha": 7.0})
  with pytest.raises(ValueError, match="alpha"):
    generate(drafter, verifier, x, **{**kw, "alpha": 7.0})


@pytest.mark.parametrize("method,rule,rule_set,match", [
    ("spec_cascade", "chow", ("diff", "opt"), "not in rule_set"),
    ("spec_cascade", "chow", ("chow", "verifier"), "cannot hold 'verifier'"),
    ("spec_cascade", "chow", ("chow", "chow"), "twice"),
    ("spec_cascade", "chow", ("chow", "nope"), "unknown deferral rule"),
    ("spec_cascade", "chow", "chow", "sequence of rule names"),
    ("spec_decode_lossy", "lossy", ("lossy",), "take a choice of rule"),
    ("token_cascade", "chow", ("chow",), "take a choice of rule"),
    ("bild", None, ("chow",), "take a choice of rule"),
])
def test_bad_rule_sets_are_refused(method, rule, rule_set, match):
  with pytest.raises(ValueError, match=match):
    decoding.DecodeConfig(method=method, rule=rule, rule_set=rule_set)


def test_knobs_pick_only_a_rule_of_the_set():
  spec = decoding.make_spec("spec_cascade", "chow", rule_set=("chow", "diff"))
  assert spec.rule is None and spec.rule_set == ("chow", "diff")
  assert int(decoding.make_knobs(spec, rule="diff").rule_index) == 1
  with pytest.raises(ValueError, match="not in the program's rule_set"):
    decoding.make_knobs(spec, rule="opt")
  # α is checked against the rule that runs (diff: α ∈ [-1, 1]).
  with pytest.raises(ValueError, match="alpha"):
    decoding.make_knobs(spec, rule="diff", alpha=5.0)
  own = decoding.make_spec("spec_cascade", "chow")
  with pytest.raises(ValueError, match="differs from the spec's rule"):
    decoding.make_knobs(own, rule="diff")


_MULTI_DEVICE = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from pairs import make_pair, random_inputs
    from spec_cascade import parallel
    from spec_cascade.decoding import generate
    import jax
    assert len(jax.devices()) == {n}, jax.devices()
    d, v = make_pair()
    x = random_inputs(6, seed=9)
    mesh = parallel.make_mesh() if {n} > 1 else None
    out = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.2, temperature=1.0,
                   num_draft_tokens=3, max_decode_length=12, seed=1, mesh=mesh)
    # 16 rows: the batch shrinks to 4 (one row per device) for the slowest rows.
    big = generate(d, v, random_inputs(16, seed=6), method="spec_cascade", rule="token_v3",
                   alpha=0.3, temperature=1.0, num_draft_tokens=3, max_decode_length=16, seed=2,
                   mesh=mesh)
    # Data and model parallel (2 x 2): the loop partitioned by XLA instead of one per device.
    mp = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.2, temperature=1.0,
                  num_draft_tokens=3, max_decode_length=12, seed=1,
                  mesh=parallel.make_mesh(model=2) if {n} > 1 else None)
    # Continuous batching: 10 inputs (padded to 12) through one slot per device.
    st = generate(d, v, random_inputs(10, seed=4), method="spec_decode", temperature=1.0,
                  num_draft_tokens=3, max_decode_length=12, seed=3, slots=4, mesh=mesh)
    # seq_cascade streamed: each device's drafter pass, then its deferred examples only.
    sq = generate(d, v, random_inputs(11, seed=9), method="seq_cascade", alpha=0.975,
                  temperature=1.0, max_decode_length=16, seed=5, example_ids=np.arange(20, 31),
                  slots=4, mesh=mesh)
    # A batch of 1 (the paper's latency regime) on the mesh: the 3 rows added as padding start
    # finished, so the call runs as many loop iterations as on one device.
    short = int(np.argmin(generate(None, v, x, method="verifier", temperature=0.0,
                                   max_decode_length=12).lengths))
    b1 = [generate(d, v, x[short:short + 1], method=m, temperature=0.0, num_draft_tokens=3,
                   max_decode_length=12, seed=1, mesh=me)
          for m in ("spec_decode", "verifier")
          for me in ((mesh, parallel.make_mesh(model=2)) if {n} > 1 else (None, None))]
    print(json.dumps({{"tokens": out.tokens.tolist(), "accepted": out.counters["accepted"].tolist(),
                      "b1_steps": [r.loop_steps for r in b1],
                      "b1_tokens": [r.tokens.tolist() for r in b1],
                      "big": big.tokens.tolist(), "big_blocks": big.counters["blocks"].tolist(),
                      "mp": mp.tokens.tolist(), "stream": st.tokens.tolist(),
                      "stream_lengths": st.lengths.tolist(),
                      "stream_blocks": st.counters["blocks"].tolist(),
                      "seq": sq.tokens.tolist(), "seq_deferred": sq.counters["deferred"].tolist(),
                      "seq_verifier_calls": sq.counters["verifier_calls"].tolist()}}))
""")


def run_on_devices(n, script=_MULTI_DEVICE):
  """Runs `script` (formatted with tests=the tests folder, n) in a fresh process with n CPU
  devices; returns the JSON it prints last."""
  env = cpu_devices_env(n)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = script.format(tests=os.path.join(root, "tests"), n=n)
  res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  import json
  return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_identical_outputs_on_one_and_four_devices():
  one, four = run_on_devices(1), run_on_devices(4)
  assert one == four
  steps = sorted(one["big_blocks"], reverse=True)
  assert steps[0] > steps[4], steps  # the second stage ran
  assert sum(d > 0 for d in one["seq_deferred"]) == 4  # as in one batch (the stream test)
  # The batch-1 row ends before the length cap, so rows decoding to the cap would show.
  assert 0 < one["b1_steps"][2] < 12 and one["b1_steps"][0] <= one["b1_steps"][2]


class TestErrors:

  def test_unknown_method(self, pair):
    with pytest.raises(ValueError, match="unknown method 'fast'.*valid methods: drafter"):
      generate(*pair, np.ones((1, 3), np.int32), method="fast")

  def test_spec_cascade_needs_rule(self, pair):
    with pytest.raises(ValueError, match="needs a rule"):
      generate(*pair, np.ones((1, 3), np.int32), method="spec_cascade")

  def test_alpha_out_of_range(self, pair):
    with pytest.raises(ValueError, match=r"outside the range \[0, 1\] of rule 'chow'"):
      generate(*pair, np.ones((1, 3), np.int32), method="spec_cascade", rule="chow", alpha=2.0)

  def test_float_inputs(self, pair):
    with pytest.raises(ValueError, match="inputs must be integer token ids"):
      generate(*pair, np.ones((1, 3), np.float32), method="verifier")

  def test_vocab_mismatch(self, pair):
    other, _ = make_pair(vocab=32)
    with pytest.raises(ValueError, match="one shared vocabulary"):
      generate(other, pair[1], np.ones((1, 3), np.int32), method="spec_decode")

  @pytest.mark.parametrize("slots", [0, -2, 1.5])
  def test_bad_slots(self, pair, slots):
    with pytest.raises(ValueError, match="slots must be a positive int"):
      generate(*pair, np.ones((3, 3), np.int32), method="verifier", slots=slots)

  def test_interleave_batch_spreads_rows_over_devices(self):
    from spec_cascade import parallel  # pylint: disable=g-import-not-at-top
    mesh = types.SimpleNamespace(shape={"data": 3, "model": 1})
    x = np.arange(7, dtype=np.int32)[:, None] + 1
    inputs, ids, order = parallel.interleave_batch(mesh, x, np.arange(7, dtype=np.int32))
    # Padded to 9; device d's share (3 rows each) holds rows d, d + 3, d + 6.
    assert order.tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert ids.tolist() == [0, 3, 6, 1, 4, -1, 2, 5, -1]
    assert inputs[:, 0].tolist() == [1, 4, 7, 2, 5, 0, 3, 6, 0]
    assert inputs[np.argsort(order)][:7, 0].tolist() == list(range(1, 8))

  def test_slots_on_a_mesh_that_cannot_stream(self):
    from spec_cascade import parallel  # pylint: disable=g-import-not-at-top
    with pytest.raises(ValueError, match="splits examples over 'data' only.*model=2"):
      parallel.check_stream_mesh(types.SimpleNamespace(shape={"data": 2, "model": 2}), 4)
    with pytest.raises(ValueError, match="slots=3 must be a multiple of the mesh's data size 2"):
      parallel.check_stream_mesh(types.SimpleNamespace(shape={"data": 2, "model": 1}), 3)
    parallel.check_stream_mesh(types.SimpleNamespace(shape={"data": 2, "model": 1}), 4)



@pytest.mark.parametrize("shape", [(1, 4224), (3, 7, 130), (5, 64), (2, 3)])
def test_argmax_is_the_first_maximum(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.normal(size=shape).astype(np.float32)
  # Ties across and inside chunks: the first index must win, as with jnp.argmax.
  x[..., -1] = x.max(axis=-1) + 1.0
  x[..., shape[-1] // 2] = x[..., -1]
  if shape[-1] > 70:
    x[..., 70] = x[..., -1]
  np.testing.assert_array_equal(decoding.argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
  x = rng.normal(size=shape).astype(np.float32)
  np.testing.assert_array_equal(decoding.argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
  x[..., 0] = -np.inf
  np.testing.assert_array_equal(decoding.argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
  all_inf = np.full(shape, -np.inf, np.float32)
  np.testing.assert_array_equal(decoding.argmax(jnp.asarray(all_inf)), 0)
  all_nan = np.full(shape, np.nan, np.float32)
  np.testing.assert_array_equal(decoding.argmax(jnp.asarray(all_nan)), 0)


# ----------------------------------------------------------------------------------------------
# Dynamic draft length (draft_confidence)

def test_dynamic_draft_length_greedy_is_the_verifier_and_counts_proposed_drafts():
  d, v = make_pair(vocab=64, emb=32, seed=3, perturb=0.3)
  x = random_inputs(5, seed=5)
  ref = generate(d, v, x, method="verifier", temperature=0.0, max_decode_length=14)
  for gamma in (2, 4):
    full = generate(d, v, x, method="spec_decode", num_draft_tokens=gamma, temperature=0.0,
                    max_decode_length=14)
    zero = generate(d, v, x, method="spec_decode", num_draft_tokens=gamma, temperature=0.0,
                    max_decode_length=14, draft_confidence=0.0)
    for k in full.counters:  # threshold 0: every draft proposed, as without one
      np.testing.assert_array_equal(zero.counters[k], full.counters[k], err_msg=k)
    for thr in (0.1, 0.3, 1.0):
      out = generate(d, v, x, method="spec_decode", num_draft_tokens=gamma, temperature=0.0,
                     max_decode_length=14, draft_confidence=thr)
      np.testing.assert_array_equal(out.tokens, ref.tokens)
      c = out.counters
      assert (c["accepted"] <= c["drafted"]).all() and (c["drafted"] <= gamma * c["blocks"]).all()
      assert (c["drafted"] >= c["blocks"]).all()  # at least one draft per block
      np.testing.assert_array_equal(c["drafter_steps"], c["drafted"])  # SpecDecode: one per draft
      if thr == 1.0:  # nobody is that sure: one draft per block
        np.testing.assert_array_equal(c["drafted"], c["blocks"])


def test_dynamic_draft_length_does_not_depend_on_batch_mates():
  d, v = make_pair(vocab=64, emb=32, seed=3, perturb=0.3)
  x = random_inputs(4, seed=6)
  kw = dict(method="spec_cascade", rule="token_v3", alpha=0.5, num_draft_tokens=3,
            temperature=1.0, seed=11, max_decode_length=12, draft_confidence=0.15)
  together = generate(d, v, x, **kw)
  assert 0 < together.counters["drafted"].sum() < 3 * together.counters["blocks"].sum()
  for i in range(4):
    alone = generate(d, v, x[i:i + 1], example_ids=np.array([i]), **kw)
    np.testing.assert_array_equal(alone.tokens[0], together.tokens[i])
    for k in ("drafted", "accepted", "drafter_steps", "blocks"):
      assert alone.counters[k][0] == together.counters[k][i], k
  with pytest.raises(ValueError, match="draft_confidence must be in"):
    generate(d, v, x, **dict(kw, draft_confidence=1.5))
  with pytest.raises(ValueError, match="drafts no blocks"):
    generate(d, v, x, method="token_cascade", rule="chow", alpha=0.3, draft_confidence=0.5)
