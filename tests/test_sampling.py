"""Scaled distributions, sampling, analytic helpers and block verification (method.md §2)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import deferral, sampling

_jit_scaled = jax.jit(sampling.scaled_probs, static_argnames=("top_k",))


def _keys(batch, seed, typed=True):
  """Per-row keys from NumPy bits: no eager threefry split (each new shape would compile)."""
  raw = np.random.default_rng(seed).integers(0, 2**32, (batch, 2), dtype=np.uint32)
  return jax.random.wrap_key_data(raw) if typed else raw


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------
# scaled_probs / sample
# ------------------------------------------------------------------------------------------

def test_temperature_scaling_and_greedy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  np.testing.assert_allclose(_jit_scaled(logits, 1.0), _softmax(logits), rtol=1e-5)
  np.testing.assert_allclose(_jit_scaled(logits, 0.5), _softmax(2 * logits), rtol=1e-5)
  greedy = np.asarray(_jit_scaled(logits, 0.0))
  np.testing.assert_array_equal(greedy, np.eye(7)[logits.argmax(-1)])
  tie = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)  # ties: the first maximal index
  np.testing.assert_array_equal(_jit_scaled(tie, 0.0), [[0, 1, 0, 0]])
  out = sampling.scaled_probs(jnp.asarray(logits, jnp.bfloat16), 1.0)
  assert out.dtype == jnp.float32
  # Per-row temperatures broadcast over the batch dims.
  per_row = np.asarray(_jit_scaled(logits, np.array([0.0, 1.0, 0.5, 1.0, 0.0], np.float32)))
  np.testing.assert_array_equal(per_row[0], greedy[0])
  np.testing.assert_allclose(per_row[2], _softmax(2 * logits[2]), rtol=1e-5)


def test_top_k_and_top_p():
  logits = np.log(np.array([[0.05, 0.4, 0.1, 0.3, 0.15]], np.float32))
  np.testing.assert_allclose(_jit_scaled(logits, 1.0, 2), [[0, 4 / 7, 0, 3 / 7, 0]], rtol=1e-5)
  # Smallest set with mass ≥ top_p: {0.4, 0.3} has 0.7 ≥ 0.7.
  np.testing.assert_allclose(_jit_scaled(logits, 1.0, 0, 0.7), [[0, 4 / 7, 0, 3 / 7, 0]],
                             rtol=1e-5)
  np.testing.assert_allclose(_jit_scaled(logits, 1.0, 0, 0.71),
                             [[0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85]], rtol=1e-5)
  # top-p acts on the temperature-scaled, top-k truncated distribution.
  scaled = _softmax(np.log([0.4, 0.3, 0.15]) / 0.5)
  want = np.zeros(5)
  want[[1, 3]] = scaled[:2] / scaled[:2].sum()
  np.testing.assert_allclose(_jit_scaled(logits, 0.5, 3, scaled[0] + 1e-3)[0], want, rtol=1e-5)
  # Off values are exact no-ops, traced or not; top_k >= V is off too.
  plain = np.asarray(_jit_scaled(logits, 1.0))
  np.testing.assert_array_equal(_jit_scaled(logits, 1.0, 5, 1.0), plain)
  np.testing.assert_array_equal(sampling.scaled_probs(logits, 1.0, 9), plain)
  # Ties at the cut-off are kept, so the set does not depend on sort order.
  tied = np.log(np.array([[0.3, 0.3, 0.2, 0.2]], np.float32))
  np.testing.assert_allclose(_jit_scaled(tied, 1.0, 0, 0.5), [[0.5, 0.5, 0, 0]], rtol=1e-5)
  np.testing.assert_allclose(_jit_scaled(tied, 1.0, 3), [[0.3, 0.3, 0.2, 0.2]], rtol=1e-5)
  # Greedy ignores truncation (argmax is always inside the kept set).
  np.testing.assert_array_equal(_jit_scaled(logits, 0.0, 2, 0.3), [[0, 1, 0, 0, 0]])


def test_sample_matches_scaled_probs():
  """200k draws from `sample` follow `scaled_probs` (TV bound as in the exactness tests)."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 8)).astype(np.float32) * 1.5
  n = 200_000
  draw = jax.jit(lambda key, lg, t, tp: jax.vmap(
      lambda k: sampling.sample(k, lg, t, 3, tp))(jax.random.split(key, n)))
  for i, (t, tp) in enumerate([(1.0, 1.0), (0.7, 0.8)]):
    tokens = np.asarray(draw(jax.random.key(i), logits, t, tp))  # [n, 3]
    probs = np.asarray(_jit_scaled(logits, t, 3, tp))
    bound = 0.5 * math.sqrt(7 / n) + math.sqrt(math.log(1e6) / (2 * n))
    for row in range(3):
      emp = np.bincount(tokens[:, row], minlength=8) / n
      assert 0.5 * np.abs(emp - probs[row]).sum() < bound
      assert np.all(emp[probs[row] == 0] == 0)  # truncated tokens never drawn
  greedy = np.asarray(draw(jax.random.key(9), logits, 0.0, 1.0))
  assert np.all(greedy == logits.argmax(-1))


def test_invalid_sampling_params():
  logits = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    sampling.scaled_probs(logits, -0.5)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    sampling.sample(jax.random.key(0), logits, float("nan"))
  for bad in (0.0, 1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
      sampling.scaled_probs(logits, 1.0, top_p=bad)
  with pytest.raises(ValueError, match="top_k must be >= 0"):
    sampling.scaled_probs(logits, 1.0, top_k=-1)
  with pytest.raises(TypeError, match="top_k must be a Python int"):
    sampling.scaled_probs(logits, 1.0, top_k=2.5)
  with pytest.raises(TypeError, match="top_k must be a Python int"):
    sampling.scaled_probs(logits, 1.0, top_k=jnp.int32(2))
  sampling.validate_sampling_params(0.0, 0, 1.0)  # the edges are valid


# ------------------------------------------------------------------------------------------
# Analytic helpers
# ------------------------------------------------------------------------------------------

def test_analytic_quantities():
  a = np.array([[0.5, 0.5, 0.0]])
  b = np.array([[0.25, 0.25, 0.5]])
  np.testing.assert_allclose(sampling.tv_distance(a, b), [0.5])
  np.testing.assert_allclose(sampling.tv_distance(a, a), [0.0])
  np.testing.assert_allclose(sampling.expected_tokens_per_call(0.5, 3), 1.875)
  np.testing.assert_allclose(sampling.expected_tokens_per_call(0.0, 5), 1.0)
  np.testing.assert_allclose(sampling.expected_tokens_per_call(1.0, 5), 6.0)
  np.testing.assert_allclose(sampling.expected_tokens_per_call(np.array([0.8]), 4),
                             [(1 - 0.8 ** 5) / 0.2], rtol=1e-6)
  np.testing.assert_allclose(sampling.analytic_speedup(0.8, 4, 0.1),
                             (1 - 0.8 ** 5) / (0.2 * 1.4), rtol=1e-6)
  np.testing.assert_allclose(sampling.analytic_speedup(0.0, 3, 0.0), 1.0)
  with pytest.raises(ValueError, match=r"acceptance rate a must lie in \[0, 1\]"):
    sampling.expected_tokens_per_call(1.2, 3)
  with pytest.raises(ValueError, match="gamma"):
    sampling.expected_tokens_per_call(0.5, -1)
  with pytest.raises(ValueError, match="cost ratio c must be >= 0"):
    sampling.analytic_speedup(0.5, 3, -1.0)


# ------------------------------------------------------------------------------------------
# verify_block
# ------------------------------------------------------------------------------------------

_jit_verify = jax.jit(deferral.verify_block, static_argnames=("rule", "top_k", "checked"))


def _block(seed, batch=16, gamma=3, vocab=10):
  rng = np.random.default_rng(seed)
  ql = rng.normal(size=(batch, gamma + 1, vocab)).astype(np.float32) * 2
  pl = rng.normal(size=(batch, gamma + 1, vocab)).astype(np.float32) * 2
  drafts = rng.integers(0, vocab, size=(batch, gamma)).astype(np.int32)
  return ql, pl, drafts


def test_greedy_specdecode_accepts_verifier_argmax_prefix():
  """T = 0 SpecDecode: drafts equal to the verifier's argmax are accepted up to the first
  mismatch, where the verifier's argmax is emitted; all matched -> the bonus argmax."""
  batch, gamma, vocab = 64, 4, 10
  rng = np.random.default_rng(3)
  ql, pl, _ = _block(3, batch, gamma, vocab)
  target_argmax = pl.argmax(-1)  # [B, γ+1]
  match = rng.random((batch, gamma)) < 0.7
  drafts = np.where(match, target_argmax[:, :gamma],
                    (target_argmax[:, :gamma] + rng.integers(1, vocab, (batch, gamma))) % vocab)
  # Greedy drafts are the drafter's argmax: make it so.
  rows, cols = np.meshgrid(np.arange(batch), np.arange(gamma), indexing="ij")
  ql[rows, cols, drafts] = ql[:, :gamma].max(-1) + 1.0
  drafts = drafts.astype(np.int32)
  keys = _keys(batch, 0)
  for rule, alpha in (("verifier", 0.0), ("lossy", 0.0), ("opt", -math.inf)):
    res = _jit_verify(keys, drafts, ql, pl, rule=rule, alpha=alpha, temperature=0.0)
    want_n = np.where(match.all(1), gamma, np.argmin(match, axis=1))
    np.testing.assert_array_equal(res.num_accepted, want_n, err_msg=rule)
    np.testing.assert_array_equal(res.next_token, target_argmax[np.arange(batch), want_n])
    np.testing.assert_array_equal(res.is_bonus, match.all(1))
    np.testing.assert_array_equal(res.from_residual, ~match.all(1))
    assert not np.any(res.residual_fallback)
  # Different keys give the same greedy outcome.
  res2 = _jit_verify(_keys(batch, 7), drafts, ql, pl,
                     rule="verifier", alpha=0.0, temperature=0.0)
  np.testing.assert_array_equal(res2.tokens, res.tokens)


def test_result_fields_are_consistent():
  ql, pl, _ = _block(4, batch=256, gamma=3)
  drafts = np.asarray(jax.jit(lambda key: jax.vmap(
      lambda k: sampling.sample(k, ql[:, :3], 1.0))(jax.random.split(key, 1))[0])(
          jax.random.key(1)))
  res = jax.device_get(_jit_verify(_keys(256, 2), drafts, ql, pl,
                                   rule="token_v3", alpha=0.4, temperature=1.0))
  n = res.num_accepted
  assert n.min() == 0 and n.max() == 3  # both ends occur in 256 rows
  np.testing.assert_array_equal(res.num_emitted, n + 1)
  np.testing.assert_array_equal(res.accepted, np.arange(3)[None] < n[:, None])
  np.testing.assert_array_equal(res.rejected, n < 3)
  np.testing.assert_array_equal(res.is_bonus, n == 3)
  tokens = np.asarray(res.tokens)
  for b in range(256):
    np.testing.assert_array_equal(tokens[b, :n[b]], drafts[b, :n[b]])
    assert tokens[b, n[b]] == res.next_token[b] and np.all(tokens[b, n[b] + 1:] == 0)
  pi, eta = deferral.target("token_v3", ql, pl, 0.4)
  np.testing.assert_allclose(res.defer_weight, eta, atol=1e-6)
  np.testing.assert_allclose(res.rejection_prob,
                             sampling.tv_distance(sampling.scaled_probs(ql, 1.0), pi), atol=1e-6)
  assert res.accept_prob.shape == (256, 3) and np.all(np.asarray(res.accept_prob) <= 1)


def test_rows_are_independent_of_batch_alpha_and_key_format():
  """A row's result depends only on its own key, logits and α: not on the batch, and not on
  whether its key is typed or raw; α can differ per row ([B, 1])."""
  ql, pl, drafts = _block(5, batch=4)
  keys = _keys(4, 3)
  alphas = np.array([[0.0], [0.3], [0.6], [0.9]], np.float32)
  full = jax.device_get(_jit_verify(keys, drafts, ql, pl, rule="lossy", alpha=alphas,
                                    temperature=0.8))
  raw = _jit_verify(_keys(4, 3, typed=False), drafts, ql, pl, rule="lossy", alpha=alphas,
                    temperature=0.8)
  np.testing.assert_array_equal(raw.tokens, full.tokens)
  for b in range(4):
    one = jax.device_get(_jit_verify(keys[b:b + 1], drafts[b:b + 1], ql[b:b + 1], pl[b:b + 1],
                                     rule="lossy", alpha=alphas[b:b + 1], temperature=0.8))
    np.testing.assert_array_equal(one.tokens[0], full.tokens[b])
    np.testing.assert_array_equal(one.num_accepted[0], full.num_accepted[b])
    np.testing.assert_allclose(one.defer_weight[0], full.defer_weight[b], rtol=1e-6)
  # γ = 0: no drafts, the bonus token from π_0 only.
  res0 = jax.device_get(_jit_verify(keys, drafts[:, :0], ql[:, :1], pl[:, :1], rule="verifier",
                                    alpha=0.0, temperature=0.0))
  np.testing.assert_array_equal(res0.num_accepted, 0)
  np.testing.assert_array_equal(res0.next_token, pl[:, 0].argmax(-1))
  assert np.all(res0.is_bonus)


def test_residual_fallback_samples_from_target():
  """A target with no residual mass at a rejection (π ≤ q̃ everywhere, here π = q̃ with one
  token zeroed) makes verify_with_target fall back to sampling π."""
  n, vocab = 100_000, 5
  qt = np.full((n, 2, vocab), 0.2, np.float32)
  pi = qt.copy()
  pi[:, :, 0] = 0.0  # unnormalised on purpose: max(0, π − q̃) ≡ 0
  drafts = np.zeros((n, 1), np.int32)  # always the zeroed token: always rejected
  res = jax.jit(sampling.verify_with_target)(_keys(n, 4), drafts,
                                             qt, pi)
  assert np.all(np.asarray(res.rejected)) and np.all(np.asarray(res.residual_fallback))
  emp = np.bincount(np.asarray(res.next_token), minlength=vocab) / n
  assert emp[0] == 0 and 0.5 * np.abs(emp - [0, 0.25, 0.25, 0.25, 0.25]).sum() < 0.01


def test_changing_alpha_beta_temperature_top_p_never_recompiles():
  traces = []

  def fn(keys, drafts, ql, pl, alpha, beta, temperature, top_p):
    traces.append(1)  # runs only while tracing
    return deferral.verify_block(keys, drafts, ql, pl, rule="lossy", alpha=alpha, beta=beta,
                                 temperature=temperature, top_k=3, top_p=top_p)

  jitted = jax.jit(fn)
  ql, pl, drafts = _block(6, batch=4)
  keys = _keys(4, 0)
  for alpha, beta, t, tp in [(0.1, 1.0, 1.0, 1.0), (0.5, 0.9, 0.0, 0.5), (0.9, 3.0, 2.0, 0.9),
                             (0.0, 1.0, 0.3, 1.0)]:
    jax.block_until_ready(jitted(keys, drafts, ql, pl, alpha, beta, t, tp))
  assert len(traces) == 1 and jitted._cache_size() == 1
  # The engine-style call: rule static, everything else traced, β solved inside.
  traces.clear()
  solved = jax.jit(lambda a, t: (traces.append(1), deferral.verify_block(
      keys, drafts, ql, pl, rule="token_v3", alpha=a, temperature=t))[1])
  for a, t in [(0.0, 1.0), (0.7, 0.0), (-1.0, 0.5)]:
    solved(a, t)
  assert len(traces) == 1 and solved._cache_size() == 1


def test_verify_block_errors():
  ql, pl, drafts = _block(7, batch=2, gamma=2, vocab=6)
  keys = _keys(2, 0)
  kw = dict(rule="chow", alpha=0.5, temperature=1.0)
  with pytest.raises(ValueError, match="valid rules: .*bild_star"):
    deferral.verify_block(keys, drafts, ql, pl, rule="chw", alpha=0.5, temperature=1.0)
  with pytest.raises(ValueError, match=r"outside the range \[0, 1\]"):
    deferral.verify_block(keys, drafts, ql, pl, rule="chow", alpha=1.5, temperature=1.0)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    deferral.verify_block(keys, drafts, ql, pl, rule="chow", alpha=0.5, temperature=-1.0)
  with pytest.raises(ValueError, match=r"\[B, γ\+1, V\] = \[2, 3, V\]"):
    deferral.verify_block(keys, drafts, ql[:, :2], pl, **kw)
  with pytest.raises(ValueError, match="keys must"):
    deferral.verify_block(keys[:1], drafts, ql, pl, **kw)
  with pytest.raises(ValueError, match="keys must"):
    deferral.verify_block(np.zeros((2, 3), np.uint32), drafts, ql, pl, **kw)
  bad = ql.copy()
  bad[1, 0, 3] = np.nan
  # Unchecked mode does not sync to look for NaN; checked mode reports it.
  deferral.verify_block(keys, drafts, bad, pl, **kw)
  with pytest.raises(ValueError, match=r"drafter_logits contain 1 NaN/\+inf.*\(1, 0, 3\)"):
    deferral.verify_block(keys, drafts, bad, pl, checked=True, **kw)
  with pytest.raises(ValueError, match=r"token ids in \[0, 6\)"):
    deferral.verify_block(keys, drafts + 6, ql, pl, checked=True, **kw)
  with pytest.raises(ValueError, match="checked=True needs a concrete"):
    jax.jit(lambda a: deferral.verify_block(keys, drafts, ql, pl, rule="chow", alpha=a,
                                            temperature=1.0, checked=True))(0.5)
  with pytest.raises(ValueError, match="only 'lossy'"):
    deferral.verify_block(keys, drafts, ql, pl, beta=1.0, **kw)
  ok = deferral.verify_block(keys, drafts, ql, pl, checked=True, **kw)
  assert ok.num_accepted.shape == (2,)
