"""Target maps of docs/method.md §3 against an independent float64 NumPy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import deferral, sampling

V = 10
B = 64
# (temperature, top_k, top_p)
SETTINGS = [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 3, 0.8), (0.0, 0, 1.0)]
INTERIOR_ALPHAS = {
    "drafter": [0.0],
    "verifier": [0.0],
    "chow": [0.2, 0.5, 0.8],
    "diff": [-0.3, 0.0, 0.3],
    "opt": [-2.0, 0.0, 0.7, 4.0],
    "token_v1": [-0.3, 0.0, 0.3],
    "token_v2": [0.0, 0.1, 0.4],
    "token_v3": [0.0, 0.3, 0.7],
    "lossy": [0.05, 0.3, 0.7, 0.95],
    "bild_star": [0.0, 0.7, 2.0],
}


# ------------------------------------------------------------------------------------------
# Independent reference (float64, written from the spec table)
# ------------------------------------------------------------------------------------------

def ref_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_scaled(logits, temperature, top_k=0, top_p=1.0):
  logits = np.asarray(logits, np.float64)
  if temperature == 0:
    return np.eye(logits.shape[-1])[logits.argmax(-1)]
  z = logits / temperature
  if 0 < top_k < z.shape[-1]:
    kth = np.sort(z, -1)[..., -top_k][..., None]
    z = np.where(z >= kth, z, -np.inf)
  probs = ref_softmax(z)
  if top_p < 1:
    out = np.zeros_like(probs)
    for i, row in enumerate(probs):
      order = np.argsort(-row, kind="stable")
      cum = np.cumsum(row[order])
      n_keep = int(np.argmax(cum >= top_p)) + 1
      keep = row >= row[order[n_keep - 1]]
      out[i] = np.where(keep, row, 0) / row[keep].sum()
    probs = out
  return probs


def ref_lossy_beta(qt, pt, alpha):
  """Float64 bisection on log β, all rows at once (a different algorithm from the library's)."""
  cap = np.minimum(qt, pt / (1 - alpha))
  lo = np.full(len(qt), math.log(1 - alpha))
  hi = lo + 60
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    too_big = np.maximum(cap, pt / np.exp(mid)[:, None]).sum(-1) > 1
    lo, hi = np.where(too_big, mid, lo), np.where(too_big, hi, mid)
  return np.exp(0.5 * (lo + hi))


def ref_target(rule, ql, pl, alpha, temperature, top_k, top_p):
  qt, pt = ref_scaled(ql, temperature, top_k, top_p), ref_scaled(pl, temperature, top_k, top_p)
  q, p = ref_softmax(ql), ref_softmax(pl)
  mq, mp = q.max(-1), p.max(-1)
  tv = np.maximum(qt - pt, 0).sum(-1)

  def choose(keep):
    return np.where(keep[:, None], qt, pt), (~keep).astype(np.float64)

  def token(in_a):
    eta = np.where(in_a, 0, qt).sum(-1)
    return np.where(in_a, qt, 0) + eta[:, None] * pt, eta

  if rule == "drafter":
    return qt, np.zeros(len(qt))
  if rule == "verifier":
    return pt, np.ones(len(qt))
  if rule == "chow":
    return choose(mq >= 1 - alpha)
  if rule == "diff":
    return choose(mq >= mp - alpha)
  if rule == "opt":
    return choose(mq >= mp - alpha * tv)  # finite α only here
  if rule == "token_v1":
    return token(q >= (mp - alpha)[:, None])
  if rule == "token_v2":
    return token(p >= (mp - alpha)[:, None])
  if rule == "token_v3":
    return token(p >= ((1 - alpha) * mp)[:, None])
  if rule == "lossy":
    beta = ref_lossy_beta(qt, pt, alpha)
    pi = np.maximum(np.minimum(qt, pt / (1 - alpha)), pt / beta[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
      return pi, np.maximum(qt - pi, 0).sum(-1) / tv
  if rule == "bild_star":
    distance = -np.log(p[np.arange(len(p)), q.argmax(-1)])
    return choose(distance <= alpha)
  raise AssertionError(rule)


# ------------------------------------------------------------------------------------------

# Jitted once per static configuration: α, β, T and top-p are traced, so loops over them reuse
# the compiled function (eager mode would compile op by op, which is slow on a loaded CPU).
_jit_target = jax.jit(deferral.target, static_argnames=("rule", "top_k"))
_jit_inputs = jax.jit(deferral.rule_inputs, static_argnames=("top_k",))
_jit_apply = jax.jit(deferral.apply_rule, static_argnames=("rule",))


def _logits(seed, batch=B, vocab=V):
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.3, 3.0, size=(batch, 1))
  return ((rng.normal(size=(batch, vocab)) * scale).astype(np.float32),
          (rng.normal(size=(batch, vocab)) * scale).astype(np.float32))


def _jax_target(rule, ql, pl, alpha, temperature, top_k, top_p, beta=None):
  pi, defer = _jit_target(rule=rule, q_logits=ql, p_logits=pl, alpha=np.float32(alpha),
                          beta=beta, temperature=np.float32(temperature), top_k=top_k,
                          top_p=np.float32(top_p))
  return np.asarray(pi, np.float64), np.asarray(defer, np.float64)


@pytest.mark.parametrize("rule", sorted(deferral.RULES))
def test_rule_matches_reference(rule):
  ql, pl = _logits(7)
  for temperature, top_k, top_p in SETTINGS:
    for alpha in INTERIOR_ALPHAS[rule]:
      pi, defer = _jax_target(rule, ql, pl, alpha, temperature, top_k, top_p)
      ref_pi, ref_defer = ref_target(rule, ql, pl, alpha, temperature, top_k, top_p)
      tag = f"{rule} α={alpha} T={temperature} top_k={top_k} top_p={top_p}"
      np.testing.assert_allclose(pi, ref_pi, atol=3e-6, err_msg=tag)
      if rule == "lossy":  # a ratio of small TVs: compare where SpecDecode rejects visibly
        visible = np.maximum(ref_scaled(ql, temperature, top_k, top_p)
                             - ref_scaled(pl, temperature, top_k, top_p), 0).sum(-1) > 1e-3
        np.testing.assert_allclose(defer[visible], ref_defer[visible], atol=1e-4, err_msg=tag)
      else:
        np.testing.assert_allclose(defer, ref_defer, atol=1e-6, err_msg=tag)
      np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-5, err_msg=tag)


@pytest.mark.parametrize("rule", sorted(deferral.RULES))
def test_edge_alphas_recover_specdecode_and_drafter_exactly(rule):
  spec = deferral.get_rule(rule)
  ql, pl = _logits(11)
  assert spec.specdecode_alpha is not None or spec.drafter_alpha is not None
  for temperature, top_k, top_p in SETTINGS:
    inputs = _jit_inputs(ql, pl, temperature, top_k, top_p)
    if spec.specdecode_alpha is not None:
      pi, defer = _jit_apply(rule, inputs, spec.specdecode_alpha)
      np.testing.assert_array_equal(np.asarray(pi), np.asarray(inputs.p_scaled))
      np.testing.assert_array_equal(np.asarray(defer), 1.0)
    if spec.drafter_alpha is not None:
      pi, defer = _jit_apply(rule, inputs, spec.drafter_alpha)
      np.testing.assert_array_equal(np.asarray(pi), np.asarray(inputs.q_scaled))
      np.testing.assert_array_equal(np.asarray(defer), 0.0)


@pytest.mark.parametrize("rule", ["chow", "diff", "opt", "bild_star"])
def test_indicator_rules_pick_q_or_p_per_position(rule):
  ql, pl = _logits(3)
  inputs = _jit_inputs(ql, pl, 0.7)
  for alpha in INTERIOR_ALPHAS[rule]:
    pi, defer = (np.asarray(x) for x in _jit_apply(rule, inputs, alpha))
    assert set(np.unique(defer)) <= {0.0, 1.0}
    np.testing.assert_array_equal(
        pi, np.where(defer[:, None] == 1, inputs.p_scaled, inputs.q_scaled))
  # The grid is informative: across α both outcomes occur.
  all_defer = np.concatenate([np.asarray(_jit_apply(rule, inputs, a)[1])
                              for a in INTERIOR_ALPHAS[rule]])
  assert 0 < all_defer.mean() < 1


@pytest.mark.parametrize("rule", ["token_v1", "token_v2", "token_v3"])
def test_token_rules_defer_weight_is_eta(rule):
  """π − η·p̃ equals q̃ on the accept set and 0 off it; η is the q̃-mass off the set, i.e. the
  probability that a cascade drawing from q̃ defers to the verifier."""
  ql, pl = _logits(5)
  inputs = _jit_inputs(ql, pl, 1.3)
  qt, pt = np.asarray(inputs.q_scaled), np.asarray(inputs.p_scaled)
  for alpha in INTERIOR_ALPHAS[rule]:
    pi, eta = (np.asarray(x, np.float64) for x in _jit_apply(rule, inputs, alpha))
    assert np.all((eta >= 0) & (eta <= 1))
    drafter_part = pi - eta[:, None] * pt
    on_set = np.isclose(drafter_part, qt, atol=1e-6)
    off_set = np.isclose(drafter_part, 0.0, atol=1e-6)
    assert np.all(on_set | off_set)
    np.testing.assert_allclose(eta, np.where(on_set & ~off_set, 0, qt).sum(-1), atol=1e-5)
    assert 0 < eta.mean() < 1


def test_lossy_is_tran_thien_lossy_specdecode():
  """Accept with min(1, p̃/((1−α)q̃)), residual ∝ max(0, p̃ − βq̃), β ≥ 1 − α (method.md §3)."""
  ql, pl = _logits(9)
  inputs = _jit_inputs(ql, pl, 1.0)
  qt, pt = np.asarray(inputs.q_scaled, np.float64), np.asarray(inputs.p_scaled, np.float64)
  for alpha in (0.1, 0.4, 0.8):
    beta = np.asarray(deferral.solve_lossy_beta(inputs.q_scaled, inputs.p_scaled, alpha))
    assert np.all(beta >= 1 - alpha - 1e-7)
    pi, _ = _jit_apply("lossy", inputs, alpha)
    pi = np.asarray(pi, np.float64)
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=2e-6)
    np.testing.assert_allclose(np.minimum(1, pi / qt), np.minimum(1, pt / ((1 - alpha) * qt)),
                               rtol=1e-5, atol=1e-6)
    res = np.maximum(pi - qt, 0)
    tt = np.maximum(pt - beta[:, None] * qt, 0)
    has = res.sum(-1) > 1e-4
    np.testing.assert_allclose(res[has] / res[has].sum(-1, keepdims=True),
                               tt[has] / tt[has].sum(-1, keepdims=True), atol=2e-4)


def test_lossy_with_given_beta_and_defer_share():
  ql, pl = _logits(13)
  inputs = _jit_inputs(ql, pl, 1.0)
  qt, pt = np.asarray(inputs.q_scaled), np.asarray(inputs.p_scaled)
  pi, defer = deferral.apply_rule("lossy", inputs, 0.3, beta=2.0)  # eager: validates β
  np.testing.assert_allclose(np.asarray(pi), np.maximum(np.minimum(qt, pt / 0.7), pt / 2.0),
                             rtol=1e-6)
  full = np.maximum(qt - pt, 0).sum(-1)
  kept = np.maximum(qt - np.asarray(pi), 0).sum(-1)
  np.testing.assert_allclose(np.asarray(defer), kept / full, rtol=1e-4, atol=1e-6)
  # β can change under jit without recompiling (see test_sampling for the counter); larger α
  # means less deferral.
  d_lo = np.asarray(_jit_apply("lossy", inputs, 0.1)[1])
  d_hi = np.asarray(_jit_apply("lossy", inputs, 0.9)[1])
  assert np.all(d_hi <= d_lo + 1e-6) and d_hi.mean() < d_lo.mean()


def test_decisions_use_unscaled_probabilities():
  """At T = 0, q̃ is one-hot (max 1) but Chow must still read max q at T = 1."""
  ql = np.log(np.array([[0.3, 0.25, 0.25, 0.2]], np.float32))
  pl = np.log(np.array([[0.1, 0.6, 0.2, 0.1]], np.float32))
  pi, defer = deferral.target("chow", ql, pl, 0.5, temperature=0.0)
  assert float(defer[0]) == 1.0  # max q = 0.3 < 1 − 0.5
  np.testing.assert_array_equal(np.asarray(pi[0]), [0, 1, 0, 0])
  pi, defer = deferral.target("chow", ql, pl, 0.75, temperature=0.0)
  assert float(defer[0]) == 0.0  # 0.3 ≥ 0.25: drafter (ties and ≥ pick the drafter)
  np.testing.assert_array_equal(np.asarray(pi[0]), [1, 0, 0, 0])


def test_ties_pick_the_drafter():
  ql = np.log(np.array([[0.5, 0.5]], np.float32))
  pl = np.log(np.array([[0.5, 0.5]], np.float32))
  _, defer = deferral.target("diff", ql, pl, 0.0)  # max q = max p − 0
  assert float(defer[0]) == 0.0
  _, defer = deferral.target("chow", ql, pl, 0.5)  # max q = 1 − α
  assert float(defer[0]) == 0.0


def test_bild_star_and_opt_edge_cases_are_finite():
  ql, pl = _logits(17, batch=4)
  pl[0, ql[0].argmax()] = -np.inf  # p(argmax q) = 0: distance +inf
  pi, defer = _jit_target(rule="bild_star", q_logits=ql, p_logits=pl, alpha=10.0)
  assert float(defer[0]) == 1.0
  pi, defer = _jit_target(rule="bild_star", q_logits=ql, p_logits=pl, alpha=math.inf)
  assert np.all(np.asarray(defer) == 0.0) and np.all(np.isfinite(np.asarray(pi)))
  same = np.repeat(ql[:1], 2, axis=0)  # q̃ = p̃: TV = 0, α·TV must not be NaN at α = ±inf
  for alpha in (-math.inf, math.inf):
    pi, defer = _jit_target(rule="opt", q_logits=same, p_logits=same, alpha=alpha)
    assert np.all(np.isfinite(np.asarray(pi))) and np.all(np.isfinite(np.asarray(defer)))
    np.testing.assert_allclose(np.asarray(pi), np.asarray(sampling.scaled_probs(same, 1.0)))


def test_per_row_alpha_broadcasts():
  ql, pl = _logits(19, batch=6)
  alphas = np.linspace(0.0, 0.9, 6).astype(np.float32)  # one α per row: shape [B]
  for rule in ("chow", "token_v3", "lossy"):
    pi, defer = _jit_target(rule=rule, q_logits=ql, p_logits=pl, alpha=alphas)
    for i, a in enumerate(alphas):
      row_pi, row_defer = _jit_target(rule=rule, q_logits=ql[i:i + 1], p_logits=pl[i:i + 1],
                                      alpha=a)
      np.testing.assert_allclose(np.asarray(pi[i]), np.asarray(row_pi[0]), atol=1e-6)
      np.testing.assert_allclose(float(defer[i]), float(row_defer[0]), atol=1e-6)


# ------------------------------------------------------------------------------------------
# Registry and validation
# ------------------------------------------------------------------------------------------

def test_registry_lists_every_rule_of_the_spec():
  assert set(deferral.RULES) == {"drafter", "verifier", "chow", "diff", "opt", "token_v1",
                                 "token_v2", "token_v3", "lossy", "bild_star"}
  for name, spec in deferral.RULES.items():
    assert spec.name == name and callable(spec.fn) and spec.doc
    assert spec.defer_kind in {"constant", "indicator", "eta", "rejection_share"}
    for edge in (spec.specdecode_alpha, spec.drafter_alpha):
      if edge is not None:
        deferral.validate_alpha(name, edge)  # the documented edges are valid α
  assert deferral.RULES["lossy"].uses_beta
  assert deferral.RULES["lossy"].drafter_alpha is None


def test_unknown_rule_lists_valid_names():
  with pytest.raises(ValueError, match=r"unknown deferral rule 'tokn_v3'.*token_v3.*verifier"):
    deferral.get_rule("tokn_v3")
  ql, pl = _logits(1, batch=1)
  with pytest.raises(ValueError, match="valid rules"):
    deferral.target("nope", ql, pl, 0.0)


@pytest.mark.parametrize("rule,alpha,shown", [
    ("chow", 1.5, r"\[0, 1\]"), ("chow", -0.1, r"\[0, 1\]"), ("diff", 1.01, r"\[-1, 1\]"),
    ("token_v3", -2.0, r"\[-1, 1\]"), ("lossy", 1.0, r"\[0, 1\)"), ("lossy", -0.5, r"\[0, 1\)"),
    ("bild_star", -3.0, r"\[-1, \+inf\]"),
])
def test_alpha_outside_range_says_the_range(rule, alpha, shown):
  with pytest.raises(ValueError, match=shown):
    deferral.validate_alpha(rule, alpha)
  ql, pl = _logits(1, batch=2)
  with pytest.raises(ValueError, match="outside the range"):
    deferral.target(rule, ql, pl, alpha)  # the Python API validates concrete α


def test_alpha_validation_details():
  deferral.validate_alpha("opt", -math.inf)
  deferral.validate_alpha("verifier", 123.0)  # α is ignored there
  deferral.validate_alpha("chow", np.array([0.0, 0.5, 1.0]))
  with pytest.raises(ValueError, match="outside the range"):
    deferral.validate_alpha("chow", np.array([0.0, 2.0]))
  with pytest.raises(ValueError, match="NaN"):
    deferral.validate_alpha("opt", float("nan"))
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(lambda a: deferral.validate_alpha("chow", a))(0.5)


def test_beta_validation():
  deferral.validate_beta("lossy", 0.3, 0.7)
  with pytest.raises(ValueError, match="beta >= 1 - alpha"):
    deferral.validate_beta("lossy", 0.3, 0.5)
  with pytest.raises(ValueError, match="only 'lossy'"):
    deferral.validate_beta("chow", 0.3, 1.0)
  ql, pl = _logits(1, batch=2)
  with pytest.raises(ValueError, match="beta >= 1 - alpha"):
    deferral.target("lossy", ql, pl, 0.5, beta=0.1)
