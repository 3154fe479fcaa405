"""Statistical exactness of speculative sampling toward every target (docs/method.md §2).

For each rule, drafts are drawn with `sampling.sample` from fixed random drafter logits and the
block is verified with `deferral.verify_block`, N = 200k independent rows at once. One jitted
function covers all rules for a given γ (compiling is the slow part on CPU); α, temperature and
top-p are its arguments, so the sweep over them compiles nothing. Rules share the logits, the
drafts and the verification keys (each check is about one rule's marginal distribution, so
sharing randomness across rules is harmless, and XLA then computes it once). Histograms are
taken inside jit. The emitted tokens must follow π = T(q, p) at every position, and the
rejection rate must be TV(q̃, π).

Bounds (failure probability δ per check, fixed seeds):
  * TV(empirical, π) over n draws: E[TV] ≤ ½·sqrt((V − 1)/n) (Cauchy–Schwarz on
    Σ_v sqrt(π_v(1 − π_v)/n)); TV moves by ≤ 1/n when one draw changes, so McDiarmid adds
    sqrt(ln(1/δ)/(2n)).
  * a rate r over n Bernoulli draws: Bernstein, sqrt(2r(1 − r)·ln(2/δ)/n) + ln(2/δ)/(3n).
"""
import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import deferral, sampling

N = 200_000
V = 8
DELTA = 1e-6
# Several α per rule, chosen so that across the block positions (different peakedness) some
# positions defer and some do not.
ALPHAS = {
    "drafter": [0.0],
    "verifier": [0.0],
    "chow": [0.3, 0.6, 0.9],
    "diff": [-0.2, 0.0, 0.2],
    "opt": [-1.0, 0.5, 3.0],
    "token_v1": [-0.2, 0.0, 0.3],
    "token_v2": [0.05, 0.2, 0.5],
    "token_v3": [0.2, 0.5, 0.8],
    "lossy": [0.1, 0.4, 0.8],
    "bild_star": [0.5, 1.5, 3.0],
}
# γ = 1: each α at T = 1, then the middle α at T = 0.6 with top-p 0.9 (traced: no recompile).
# γ = 2: the first α at a high temperature, the last α at a low one with top-p.


def tv_bound(n: int, vocab: int = V, delta: float = DELTA) -> float:
  return 0.5 * math.sqrt((vocab - 1) / n) + math.sqrt(math.log(1 / delta) / (2 * n))


def rate_bound(n: int, r: float, delta: float = DELTA) -> float:
  log_term = math.log(2 / delta)
  return math.sqrt(2 * r * (1 - r) * log_term / n) + log_term / (3 * n)


RULE_NAMES = tuple(sorted(deferral.RULES))
TOP_K_RULES = ("lossy", "token_v3")  # also run through the top-k (k = 4) + top-p pipeline
TOP_K = 4


def _logits(gamma: int):
  """Drafter / verifier logits [γ+1, V]; peakedness grows with the position."""
  rng = np.random.default_rng(1234 + gamma)
  scale = np.linspace(0.7, 2.5, gamma + 1)[:, None]
  q = rng.normal(size=(gamma + 1, V)) * scale
  p = rng.normal(size=(gamma + 1, V)) * scale
  return q.astype(np.float32), p.astype(np.float32)


def _hist(tokens, mask):
  return jnp.sum(jax.nn.one_hot(tokens, V, dtype=jnp.int32) * mask[:, None], axis=0)


@functools.lru_cache(maxsize=None)
def _runner(entries: tuple, gamma: int):
  """Jitted: N blocks of γ drafts verified under each (rule, top_k) entry -> histograms."""

  @jax.jit
  def run(key, q_logits, p_logits, alphas, temperature, top_p):
    draft_key, verify_key = jax.random.split(key)
    ql = jnp.broadcast_to(q_logits, (N, gamma + 1, V))
    pl = jnp.broadcast_to(p_logits, (N, gamma + 1, V))
    verify_keys = jax.random.split(verify_key, N)
    drafts = {
        top_k: jnp.stack([
            sampling.sample(k, ql[:, j], temperature, top_k, top_p)
            for j, k in enumerate(jax.random.split(draft_key, gamma))
        ], axis=1) for top_k in {k for _, k in entries}
    }
    out = []
    for i, (rule, top_k) in enumerate(entries):
      res = deferral.verify_block(verify_keys, drafts[top_k], ql, pl, rule=rule,
                                  alpha=alphas[i], temperature=temperature, top_k=top_k,
                                  top_p=top_p)
      pi, _ = deferral.target(rule, q_logits, p_logits, alphas[i], temperature=temperature,
                              top_k=top_k, top_p=top_p)
      q_scaled = sampling.scaled_probs(q_logits, temperature, top_k, top_p)
      n, tok = res.num_accepted, res.tokens
      stats = {"pi": pi, "reject": sampling.tv_distance(q_scaled, pi),
               "hist0": _hist(tok[:, 0], jnp.ones_like(n)), "rejected0": jnp.sum(n == 0)}
      if gamma == 2:
        stats.update(hist1=_hist(tok[:, 1], n >= 1), accepted0=jnp.sum(n >= 1),
                     rejected1=jnp.sum(n == 1), hist2=_hist(tok[:, 2], n == 2),
                     bonus=jnp.sum(n == 2))
      out.append(stats)
    return out

  return run


def _collect(entries, gamma, cases, seed):
  """{(rule, top_k): [(tag, stats), ...]}; cases: [(α-index, temperature, top_p), ...]."""
  q_logits, p_logits = _logits(gamma)
  run = _runner(entries, gamma)
  results = {entry: [] for entry in entries}
  for c, (which, temperature, top_p) in enumerate(cases):
    alphas = [ALPHAS[rule][which(len(ALPHAS[rule]))] for rule, _ in entries]
    stats = jax.device_get(run(jax.random.key(seed * 100 + c), q_logits, p_logits,
                               np.array(alphas, np.float32), np.float32(temperature),
                               np.float32(top_p)))
    for (rule, top_k), alpha, s in zip(entries, alphas, stats):
      tag = f"{rule} γ={gamma} α={alpha} T={temperature} top_k={top_k} top_p={top_p}"
      results[(rule, top_k)].append((tag, s))
  return results


def _check_dist(hist: np.ndarray, pi: np.ndarray, what: str) -> None:
  n = int(hist.sum())
  emp = hist / n
  tv = 0.5 * np.abs(emp - pi).sum()
  bound = tv_bound(n)
  assert tv < bound, (f"{what}: TV(empirical, π) = {tv:.5f} ≥ bound {bound:.5f} (n = {n})\n"
                      f"emp = {np.round(emp, 4)}\nπ   = {np.round(pi, 4)}")


def _check_rate(hits: int, n: int, r: float, what: str) -> None:
  emp = hits / n
  bound = rate_bound(n, r)
  assert abs(emp - r) < bound, f"{what}: rate {emp:.5f} vs TV(q̃, π) = {r:.5f} (bound {bound:.5f})"


def _check(results_for_entry, gamma):
  for tag, s in results_for_entry:
    pi = np.asarray(s["pi"], np.float64)
    _check_dist(s["hist0"], pi[0], f"{tag}, first token")
    _check_rate(int(s["rejected0"]), N, float(s["reject"][0]), f"{tag}, rejection of draft 0")
    if gamma == 2:
      _check_dist(s["hist1"], pi[1], f"{tag}, token after an accepted first draft")
      _check_rate(int(s["rejected1"]), int(s["accepted0"]), float(s["reject"][1]),
                  f"{tag}, rejection of draft 1 given draft 0 accepted")
      if int(s["bonus"]) >= 5_000:
        _check_dist(s["hist2"], pi[2], f"{tag}, bonus token")


@pytest.fixture(scope="module")
def gamma1_results():
  """Each rule's α grid at T = 1, then its middle α at T = 0.6 with top-p 0.9."""
  cases = [(lambda m, i=i: min(i, m - 1), 1.0, 1.0) for i in range(3)]
  cases.append((lambda m: m // 2, 0.6, 0.9))
  return _collect(tuple((rule, 0) for rule in RULE_NAMES), 1, cases, seed=1)


@pytest.fixture(scope="module")
def gamma2_results():
  """First α at a high temperature; last α at a low one with top-p; plus top-k entries."""
  entries = tuple((rule, 0) for rule in RULE_NAMES) + tuple((r, TOP_K) for r in TOP_K_RULES)
  cases = [(lambda m: 0, 1.7, 1.0), (lambda m: m - 1, 0.6, 0.9)]
  return _collect(entries, 2, cases, seed=2)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_gamma1_emitted_token_follows_target(rule, gamma1_results):
  _check(gamma1_results[(rule, 0)], 1)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_gamma2_token_after_accepted_draft_follows_target(rule, gamma2_results):
  _check(gamma2_results[(rule, 0)], 2)


@pytest.mark.parametrize("rule", TOP_K_RULES)
def test_top_k_top_p_pipeline_is_exact(rule, gamma2_results):
  _check(gamma2_results[(rule, TOP_K)], 2)


def test_cases_exercise_both_branches(gamma1_results):
  """The α grid is informative: some settings accept most drafts, others reject many."""
  rejections = [float(s["reject"][0]) for rule in ("chow", "diff", "token_v3", "lossy")
                for _, s in gamma1_results[(rule, 0)]]
  assert min(rejections) < 0.15 and max(rejections) > 0.3, rejections


def test_bounds_detect_a_wrong_target(gamma1_results):
  """The TV bound is tight enough to reject a plausible bug: emitting from p̃ instead of π."""
  _, p_logits = _logits(1)
  p_scaled = np.asarray(sampling.scaled_probs(p_logits, 1.0))
  tag, s = gamma1_results[("token_v3", 0)][2]  # α = 0.8: π is far from p̃
  assert 0.5 * np.abs(np.asarray(s["pi"][0]) - p_scaled[0]).sum() > 3 * tv_bound(N)
  with pytest.raises(AssertionError):
    _check_dist(s["hist0"], p_scaled[0], f"{tag} against the wrong reference p̃")


DYNAMIC_RULES = (("verifier", 0.0), ("token_v3", 0.5), ("chow", 0.6))
N_DYNAMIC = 60_000


@pytest.fixture(scope="module")
def dynamic_results():
  """γ = 2 with a per-row draft count decided on the drafter's side: draft 1 is proposed only
  when draft 0 is in a fixed half of the vocabulary (as a confidence threshold on q_1, which
  depends on draft 0, would decide). One jitted run for all rules."""
  gamma, n_rows = 2, N_DYNAMIC
  q_logits, p_logits = _logits(gamma)

  @jax.jit
  def run(key):
    draft_key, verify_key = jax.random.split(key)
    ql = jnp.broadcast_to(q_logits, (n_rows, gamma + 1, V))
    q_scaled = sampling.scaled_probs(ql, 1.0, 0, 1.0)
    drafts = jnp.stack([sampling.sample(k, ql[:, j], 1.0, 0, 1.0)
                        for j, k in enumerate(jax.random.split(draft_key, gamma))], axis=1)
    num_proposed = jnp.where(drafts[:, 0] < V // 2, 2, 1)
    keys = jax.random.split(verify_key, n_rows)
    out = {}
    for rule, alpha in DYNAMIC_RULES:
      pi, _ = deferral.target(rule, q_logits, p_logits, alpha, temperature=1.0)
      res = sampling.verify_with_target(keys, drafts, q_scaled,
                                        jnp.broadcast_to(pi, (n_rows, gamma + 1, V)),
                                        num_proposed=num_proposed)
      n, tok = res.num_accepted, res.tokens
      second = res.num_emitted >= 2
      out[rule] = (pi, _hist(tok[:, 0], jnp.ones_like(n)),
                   _hist(tok[:, 1], second & (num_proposed == 2)),
                   _hist(tok[:, 1], second & (num_proposed == 1)),
                   jnp.max(n - num_proposed), jnp.sum(res.is_bonus & (num_proposed == 1)))
    return out

  return jax.device_get(run(jax.random.key(7)))


@pytest.mark.parametrize("rule", [r for r, _ in DYNAMIC_RULES])
def test_dynamic_draft_length_keeps_every_token_exact(rule, dynamic_results):
  """The first token follows π_0, and the second follows π_1 both where draft 1 was proposed
  and where drafting stopped after draft 0."""
  pi, h0, h1_proposed, h1_stopped, over, short_bonus = dynamic_results[rule]
  pi = np.asarray(pi, np.float64)
  assert over <= 0  # never more accepted drafts than proposed
  assert short_bonus > 1000  # rows that proposed one draft and drew the next token from π_1
  _check_dist(h0, pi[0], f"{rule}: first token")
  _check_dist(h1_proposed, pi[1], f"{rule}: second token, draft 1 proposed")
  _check_dist(h1_stopped, pi[1], f"{rule}: second token, drafting stopped after draft 0")
