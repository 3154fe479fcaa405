"""Deferral rules: the target maps π = T(q, p) of docs/method.md §3, BiLD*'s included.

Every rule is a pure function with one signature,

    fn(q_scaled, p_scaled, q, p, alpha, beta) -> (pi, defer)

    q_scaled, p_scaled: float32 [..., V]  q̃, p̃: temperature-scaled (and top-k / top-p
                                          truncated) drafter / verifier distributions
    q, p:               float32 [..., V]  the same models at temperature 1, untruncated
    alpha:              float32 scalar or broadcastable to [...]; the lenience (traced)
    beta:               None or float32 like alpha; only `lossy` reads it
    pi:                 float32 [..., V]  the target distribution
    defer:              float32 [...]     the rule's deferral at each position (see RULES / docs)

Deferral *decisions* read the unscaled q, p; the *target* is built from q̃, p̃. Ties pick the
drafter (comparisons are ≥). No Python branching on array values, so α, β and the temperature
can change between calls without recompiling. Range checks on α need concrete values; they live
in `validate_alpha`, which the Python entry points call whenever α is concrete
(docs/deferral_rules.md lists the ranges and edge values).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade import sampling

RuleFn = Callable[..., tuple[jax.Array, jax.Array]]

def _alpha(alpha: Any) -> jax.Array:
  """α as a float32 array (scalar or broadcastable to the batch dims [...])."""
  return jnp.asarray(alpha, jnp.float32)


def _max(x: jax.Array) -> jax.Array:
  """Peak probability, clipped to [0, 1] so float round-off cannot move the edge cases."""
  return jnp.clip(jnp.max(x, axis=-1), 0.0, 1.0)


def _choose(keep_drafter: jax.Array, q_scaled: jax.Array,
            p_scaled: jax.Array) -> tuple[jax.Array, jax.Array]:
  """π = q̃ where keep_drafter else p̃; defer r = 1 − keep_drafter ∈ {0, 1}. keep: bool [...]."""
  pi = jnp.where(keep_drafter[..., None], q_scaled, p_scaled)
  return pi, jnp.logical_not(keep_drafter).astype(jnp.float32)


def _token_target(in_accept_set: jax.Array, q_scaled: jax.Array,
                  p_scaled: jax.Array) -> tuple[jax.Array, jax.Array]:
  """π = q̃·1[A] + η·p̃ with η = q̃-mass outside A; returns (π, η). in_accept_set: bool [..., V].

  η is normalised by Σ q̃ so π sums to 1 even when q̃ carries float round-off, and it is pinned
  to exactly 0 / 1 when A is everything / empty so the edge α values reproduce q̃ / p̃ bit for bit.
  """
  total = jnp.sum(q_scaled, axis=-1)
  outside = jnp.sum(jnp.where(in_accept_set, 0.0, q_scaled), axis=-1)
  eta = outside / jnp.maximum(total, sampling.PROB_FLOOR)
  eta = jnp.where(jnp.all(in_accept_set, axis=-1), 0.0,
                  jnp.where(jnp.any(in_accept_set, axis=-1), eta, 1.0))
  pi = jnp.where(in_accept_set, q_scaled, 0.0) + eta[..., None] * p_scaled
  return pi, eta


# ----------------------------------------------------------------------------------------------
# The target maps
# ----------------------------------------------------------------------------------------------

def drafter(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃ (drafter alone); defer = 0."""
  del p_scaled, q, p, alpha, beta
  return q_scaled, jnp.zeros(q_scaled.shape[:-1], jnp.float32)


def verifier(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = p̃ (SpecDecode, lossless); defer = 1."""
  del q_scaled, q, p, alpha, beta
  return p_scaled, jnp.ones(p_scaled.shape[:-1], jnp.float32)


def chow(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃ if max q ≥ 1 − α else p̃ (Chow's rule); defer ∈ {0, 1}."""
  del p, beta
  return _choose(_max(q) >= 1.0 - _alpha(alpha), q_scaled, p_scaled)


def diff(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃ if max q ≥ max p − α else p̃; defer ∈ {0, 1}."""
  del beta
  return _choose(_max(q) >= _max(p) - _alpha(alpha), q_scaled, p_scaled)


def opt(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃ if max q ≥ max p − α·TV(q̃, p̃) else p̃ (plug-in optimal rule); defer ∈ {0, 1}."""
  del beta
  tv = sampling.tv_distance(q_scaled, p_scaled)
  a = _alpha(alpha)
  # Where TV = 0, α·TV is 0 for finite α and ±inf for α = ±inf (the documented edges: always /
  # never defer), never NaN.
  shift = jnp.where(tv > 0, a * tv, jnp.where(jnp.isinf(a), a, 0.0))
  return _choose(_max(q) >= _max(p) - shift, q_scaled, p_scaled)


def token_v1(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃·1[A] + η·p̃, A = {v : q(v) ≥ max p − α}; defer = η."""
  del beta
  threshold = (_max(p) - _alpha(alpha))[..., None]
  return _token_target(q >= threshold, q_scaled, p_scaled)


def token_v2(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃·1[A] + η·p̃, A = {v : p(v) ≥ max p − α}; defer = η."""
  del q, beta
  threshold = (_max(p) - _alpha(alpha))[..., None]
  return _token_target(p >= threshold, q_scaled, p_scaled)


def token_v3(q_scaled, p_scaled, q, p, alpha, beta=None):
  """π = q̃·1[A] + η·p̃, A = {v : p(v) ≥ (1 − α)·max p}; defer = η. The paper's main rule."""
  del q, beta
  threshold = ((1.0 - _alpha(alpha)) * _max(p))[..., None]
  return _token_target(p >= threshold, q_scaled, p_scaled)


def solve_lossy_beta(q_scaled: jax.Array, p_scaled: jax.Array, alpha: Any,
                     max_iters: int = 64) -> jax.Array:
  """β ≥ 1 − α with Σ_v max(min(q̃, p̃/(1−α)), p̃/β) = 1. [..., V] -> float32 [...].

  Exact (up to float rounding) and jittable, without sorting the vocabulary (a sort per position
  cost ~75 ms per block on a CPU). With c = min(q̃, p̃/(1−α)), f(β) = Σ_v max(c_v, p̃_v/β) is
  convex and decreasing, and f(1 − α) = 1/(1 − α) ≥ 1. Active-set iteration: with
  S = {v : p̃_v/β_k > c_v}, β_{k+1} = P_S / (1 − C_{∉S}) is the root of C_{∉S} + P_S/β, a lower
  bound of f for β ≥ β_k; so β_k rises monotonically to the root and stops exactly once S stops
  changing (S only shrinks: at most V steps, in practice a handful). At α = 0 the root is β = 1,
  returned exactly (π = p̃ bit for bit). If Σ c = 1 there is no finite root (π → q̃ as β → ∞);
  the largest breakpoint p̃_v / c_v is returned, where π already equals c = q̃.
  """
  alpha = jnp.broadcast_to(_alpha(alpha), q_scaled.shape[:-1])
  one_minus = 1.0 - alpha
  cap = jnp.minimum(q_scaled, p_scaled / one_minus[..., None])
  tiny = jnp.finfo(jnp.float32).tiny
  breakpoint = jnp.where(cap > 0, p_scaled / jnp.maximum(cap, tiny), jnp.inf)
  finite_break = jnp.where(jnp.isfinite(breakpoint), breakpoint, 0.0)
  largest = jnp.maximum(jnp.max(finite_break, axis=-1), one_minus)

  def step(beta):
    active = p_scaled > cap * beta[..., None]  # p̃/β > c
    mass = jnp.sum(jnp.where(active, p_scaled, 0.0), axis=-1)
    capped = jnp.sum(jnp.where(active, 0.0, cap), axis=-1)
    room = 1.0 - capped
    # No room left (Σ c over the capped tokens = 1): no finite root, take the last breakpoint.
    nxt = jnp.where(room > tiny, mass / jnp.maximum(room, tiny), largest)
    # Monotone from below; float rounding must not move it backwards. (No upper clip: tokens
    # with c = 0 never cap, so the root can lie past every finite breakpoint.)
    return jnp.maximum(nxt, beta)

  def cond(carry):
    i, beta, prev = carry
    return (i < max_iters) & jnp.any(beta != prev)

  def body(carry):
    i, beta, _ = carry
    return i + 1, step(beta), beta

  _, beta, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), step(one_minus), one_minus))
  return jnp.where(alpha == 0.0, 1.0, beta)


def lossy(q_scaled, p_scaled, q, p, alpha, beta=None):
  """Lossy SpecDecode: π = max(min(q̃, p̃/(1−α)), p̃/β); β solved (None) or given (≥ 1 − α).

  defer = TV(q̃, π) / TV(q̃, p̃) ∈ [0, 1]: the share of SpecDecode's rejection mass kept
  (exactly r for a mixture (1−r)q̃ + r p̃); 1 where q̃ = p̃.
  """
  del q, p
  a = _alpha(alpha)
  if beta is None:
    beta = solve_lossy_beta(q_scaled, p_scaled, a)
  beta = jnp.broadcast_to(jnp.asarray(beta, jnp.float32), q_scaled.shape[:-1])
  one_minus = jnp.broadcast_to(1.0 - a, q_scaled.shape[:-1])
  pi = jnp.maximum(jnp.minimum(q_scaled, p_scaled / one_minus[..., None]),
                   p_scaled / beta[..., None])
  full = sampling.tv_distance(q_scaled, p_scaled)
  kept = sampling.tv_distance(q_scaled, pi)
  defer = jnp.where(full > 0, jnp.clip(kept / jnp.maximum(full, sampling.PROB_FLOOR), 0.0, 1.0),
                    1.0)
  return pi, defer


def bild_star(q_scaled, p_scaled, q, p, alpha, beta=None):
  """BiLD*: π = q̃ if −log p(argmax q) ≤ α else p̃; defer ∈ {0, 1}."""
  del beta
  top = jnp.argmax(q, axis=-1)
  p_top = jnp.take_along_axis(p, top[..., None], axis=-1)[..., 0]
  distance = -jnp.log(jnp.clip(p_top, 0.0, 1.0))  # +inf where p(argmax q) = 0
  return _choose(distance <= _alpha(alpha), q_scaled, p_scaled)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RuleSpec:
  """One deferral rule.

  Attributes:
    name: registry key.
    fn: the target map (module docstring signature).
    alpha_range: (lo, hi) of valid α, or None when α is ignored.
    alpha_upper_open: True when hi itself is excluded (lossy: α < 1).
    specdecode_alpha: α at which π = p̃ exactly (None: no such α).
    drafter_alpha: α at which π = q̃ exactly (None: no such α).
    sweep_range: a finite α interval that covers the rule's useful trade-offs, for sweeps.
    defer_kind: 'constant' | 'indicator' (r ∈ {0,1}) | 'eta' (q̃-mass outside the accept set)
      | 'rejection_share' (TV(q̃, π) / TV(q̃, p̃)).
    uses_beta: whether `beta` is read.
    doc: one-line formula.
  """
  name: str
  fn: RuleFn
  alpha_range: tuple[float, float] | None
  specdecode_alpha: float | None
  drafter_alpha: float | None
  sweep_range: tuple[float, float] | None
  defer_kind: str
  doc: str
  alpha_upper_open: bool = False
  uses_beta: bool = False

  def range_str(self) -> str:
    if self.alpha_range is None:
      return "(α is ignored)"
    lo, hi = self.alpha_range
    fmt = lambda x: ("-inf" if x < 0 else "+inf") if math.isinf(x) else f"{x:g}"
    return f"[{fmt(lo)}, {fmt(hi)}{')' if self.alpha_upper_open else ']'}"


_INF = math.inf

RULES: dict[str, RuleSpec] = {
    spec.name: spec for spec in (
        RuleSpec("drafter", drafter, None, None, 0.0, None, "constant", "π = q̃"),
        RuleSpec("verifier", verifier, None, 0.0, None, None, "constant", "π = p̃ (SpecDecode)"),
        RuleSpec("chow", chow, (0.0, 1.0), 0.0, 1.0, (0.0, 1.0), "indicator",
                 "π = q̃ if max q ≥ 1 − α else p̃"),
        RuleSpec("diff", diff, (-1.0, 1.0), -1.0, 1.0, (-1.0, 1.0), "indicator",
                 "π = q̃ if max q ≥ max p − α else p̃"),
        RuleSpec("opt", opt, (-_INF, _INF), -_INF, _INF, (-10.0, 10.0), "indicator",
                 "π = q̃ if max q ≥ max p − α·TV(q̃, p̃) else p̃"),
        RuleSpec("token_v1", token_v1, (-1.0, 1.0), -1.0, 1.0, (-1.0, 1.0), "eta",
                 "π = q̃·1[A] + η·p̃, A = {v : q(v) ≥ max p − α}"),
        RuleSpec("token_v2", token_v2, (-1.0, 1.0), -1.0, 1.0, (-1.0, 1.0), "eta",
                 "π = q̃·1[A] + η·p̃, A = {v : p(v) ≥ max p − α}"),
        RuleSpec("token_v3", token_v3, (-1.0, 1.0), -1.0, 1.0, (0.0, 1.0), "eta",
                 "π = q̃·1[A] + η·p̃, A = {v : p(v) ≥ (1 − α)·max p}"),
        RuleSpec("lossy", lossy, (0.0, 1.0), 0.0, None, (0.0, 0.99), "rejection_share",
                 "π = max(min(q̃, p̃/(1−α)), p̃/β), Σπ = 1", alpha_upper_open=True,
                 uses_beta=True),
        RuleSpec("bild_star", bild_star, (-1.0, _INF), -1.0, _INF, (0.0, 10.0), "indicator",
                 "π = q̃ if −log p(argmax q) ≤ α else p̃"),
    )
}


def get_rule(name: str) -> RuleSpec:
  """The RuleSpec for `name`; ValueError listing the valid names otherwise."""
  try:
    return RULES[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown deferral rule {name!r}; valid rules: "
                     f"{', '.join(sorted(RULES))}.") from None


def switched(names: Sequence[str], index: Any) -> RuleFn:
  """One target map for several rules: rule `names[index]`, chosen at run time (`index` may be
  traced), so a program compiled with it serves every rule in `names`.

  The rules' own maps run unchanged inside `lax.switch` (only the chosen branch executes); π
  and the deferral come back float32 whatever the rule returns."""
  fns = [get_rule(n).fn for n in names]
  if len(fns) == 1:
    return fns[0]

  def branch(fn):
    def run(args):
      pi, defer = fn(*args)
      return jnp.asarray(pi, jnp.float32), jnp.asarray(defer, jnp.float32)
    return run

  def fn(q_scaled, p_scaled, q, p, alpha, beta=None):
    return jax.lax.switch(jnp.asarray(index, jnp.int32), [branch(f) for f in fns],
                          (q_scaled, p_scaled, q, p, alpha, beta))
  return fn


def validate_alpha(name: str, alpha: Any) -> None:
  """Raises ValueError unless every element of concrete `alpha` lies in the rule's range.

  Needs a concrete α (Python number or concrete array): call it before entering jit. A traced α
  raises TypeError, since its range cannot be checked.
  """
  spec = get_rule(name)
  if sampling.is_traced(alpha):
    raise TypeError(f"validate_alpha needs a concrete alpha for rule {name!r}; it got a traced "
                    "value. Validate the Python value before calling the jitted function.")
  a = np.asarray(alpha, dtype=np.float64)
  if np.any(np.isnan(a)):
    raise ValueError(f"alpha for rule {name!r} is NaN; valid range {spec.range_str()}.")
  if spec.alpha_range is None:
    return
  lo, hi = spec.alpha_range
  ok = (a >= lo) & ((a < hi) if spec.alpha_upper_open else (a <= hi))
  if not np.all(ok):
    bad = a[~ok] if a.ndim else a
    raise ValueError(f"alpha={np.asarray(bad).ravel()[:5].tolist()} is outside the range "
                     f"{spec.range_str()} of rule {name!r}. SpecDecode is at α = "
                     f"{spec.specdecode_alpha}, drafter-only at α = {spec.drafter_alpha}.")


def validate_beta(name: str, alpha: Any, beta: Any) -> None:
  """Raises ValueError unless concrete β ≥ 1 − α (only `lossy` reads β); None = solve."""
  spec = get_rule(name)
  if beta is None:
    return
  if not spec.uses_beta:
    raise ValueError(f"rule {name!r} takes no beta; only 'lossy' does. Pass beta=None.")
  if sampling.is_traced(beta) or sampling.is_traced(alpha):
    raise TypeError("validate_beta needs concrete alpha and beta.")
  b = np.asarray(beta, np.float64)
  a = np.asarray(alpha, np.float64)
  if np.any(~np.isfinite(b)) or np.any(b < 1.0 - a):
    raise ValueError(f"lossy needs a finite beta >= 1 - alpha = {(1.0 - a).tolist()}, got "
                     f"{b.tolist()}; or pass beta=None to solve for the β that normalises π.")


# ----------------------------------------------------------------------------------------------
# Convenience: from logits to a target
# ----------------------------------------------------------------------------------------------

class RuleInputs(NamedTuple):
  """The four distributions a rule reads, all float32 [..., V]."""
  q_scaled: jax.Array
  p_scaled: jax.Array
  q: jax.Array
  p: jax.Array


def rule_inputs(q_logits: jax.Array, p_logits: jax.Array, temperature: Any, top_k: int = 0,
                top_p: Any = 1.0) -> RuleInputs:
  """q̃, p̃ (scaled / truncated) and q, p (T = 1, untruncated) from logits [..., V]."""
  q_logits = jnp.asarray(q_logits, jnp.float32)
  p_logits = jnp.asarray(p_logits, jnp.float32)
  return RuleInputs(
      q_scaled=sampling.scaled_probs(q_logits, temperature, top_k, top_p),
      p_scaled=sampling.scaled_probs(p_logits, temperature, top_k, top_p),
      q=jax.nn.softmax(q_logits, axis=-1),
      p=jax.nn.softmax(p_logits, axis=-1),
  )


def apply_rule(rule: str | RuleSpec, inputs: RuleInputs, alpha: Any,
               beta: Any = None) -> tuple[jax.Array, jax.Array]:
  """Runs a rule on prepared inputs, validating α / β first wherever they are concrete."""
  spec = rule if isinstance(rule, RuleSpec) else get_rule(rule)
  if not sampling.is_traced(alpha):
    validate_alpha(spec.name, alpha)
    if not sampling.is_traced(beta):
      validate_beta(spec.name, alpha, beta)
  elif beta is not None and not spec.uses_beta:
    raise ValueError(f"rule {spec.name!r} takes no beta; only 'lossy' does.")
  return spec.fn(inputs.q_scaled, inputs.p_scaled, inputs.q, inputs.p, alpha, beta)


def target(rule: str, q_logits: jax.Array, p_logits: jax.Array, alpha: Any, beta: Any = None,
           temperature: Any = 1.0, top_k: int = 0,
           top_p: Any = 1.0) -> tuple[jax.Array, jax.Array]:
  """Target π [..., V] and deferral [...] of `rule` from drafter / verifier logits [..., V]."""
  inputs = rule_inputs(q_logits, p_logits, temperature, top_k, top_p)
  return apply_rule(rule, inputs, alpha, beta)


# ----------------------------------------------------------------------------------------------
# Verifying a block toward a rule's target (sampling.verify_with_target does the draws).

def _check_block_shapes(drafts, drafter_logits, verifier_logits) -> None:
  if drafts.ndim != 2:
    raise ValueError(f"drafts must be int [B, γ], got shape {drafts.shape}.")
  batch, gamma = drafts.shape
  want = (batch, gamma + 1)
  for name, arr in (("drafter_logits", drafter_logits), ("verifier_logits", verifier_logits)):
    if arr.ndim != 3 or arr.shape[:2] != want:
      raise ValueError(
          f"{name} must have shape [B, γ+1, V] = [{batch}, {gamma + 1}, V] for drafts of shape "
          f"{drafts.shape}, got {arr.shape}.")
  if drafter_logits.shape[-1] != verifier_logits.shape[-1]:
    raise ValueError(
        f"drafter and verifier vocabularies differ: {drafter_logits.shape[-1]} vs "
        f"{verifier_logits.shape[-1]}.")


def verify_block(keys: jax.Array, drafts: jax.Array, drafter_logits: jax.Array,
                 verifier_logits: jax.Array, *, rule: str, alpha: Any, beta: Any = None,
                 temperature: Any, top_k: int = 0, top_p: Any = 1.0,
                 checked: bool = False) -> sampling.VerifyResult:
  """Verifies one draft block toward the target of `rule` (method.md §2–§3).

  Args:
    keys: per-row keys, typed [B] (`jax.random.split(jax.random.key(seed), B)`) or raw uint32
      [B, 2]; both give the same draws for the same key data.
    drafts: int32 [B, γ]; drafts[:, j] was drawn with `sample(..., drafter_logits[:, j],
      temperature, top_k, top_p)`.
    drafter_logits: [B, γ+1, V]; position j scores draft j, position γ follows the last draft.
    verifier_logits: [B, γ+1, V]; same alignment.
    rule: static registry name (`RULES`).
    alpha: lenience; traced scalar or broadcastable to [B, γ+1] (e.g. [B, 1] per row).
    beta: `lossy` only: None (static) solves β so the target sums to 1; else a traced β ≥ 1 − α.
    temperature, top_k, top_p: as in `scaled_probs`, applied to both models.
    checked: static; if True every input must be concrete (call outside jit) and NaN / +inf
      logits, out-of-vocabulary drafts and bad α / β raise ValueError.

  Returns:
    VerifyResult (see its docstring).
  """
  spec = get_rule(rule)
  drafts = jnp.asarray(drafts)
  drafter_logits = jnp.asarray(drafter_logits)
  verifier_logits = jnp.asarray(verifier_logits)
  _check_block_shapes(drafts, drafter_logits, verifier_logits)
  if checked:
    for name, val in (("alpha", alpha), ("temperature", temperature), ("top_p", top_p),
                      ("drafts", drafts), ("beta", beta)):
      if sampling.is_traced(val):
        raise ValueError(f"checked=True needs a concrete {name}; call verify_block outside "
                         "jax.jit / vmap, or validate before entering jit.")
    sampling.check_finite_logits(drafter_logits, "drafter_logits")
    sampling.check_finite_logits(verifier_logits, "verifier_logits")
    d = np.asarray(drafts)
    vocab = drafter_logits.shape[-1]
    if d.size and (d.min() < 0 or d.max() >= vocab):
      raise ValueError(f"drafts must be token ids in [0, {vocab}), got range "
                       f"[{d.min()}, {d.max()}].")
  probs = rule_inputs(drafter_logits, verifier_logits, temperature, top_k, top_p)
  pi, defer = apply_rule(spec, probs, alpha, beta)
  return sampling.verify_with_target(keys, drafts, probs.q_scaled, pi, defer)


__all__ = [
    "RULES", "RuleInputs", "RuleSpec", "apply_rule", "bild_star", "chow", "diff", "drafter",
    "get_rule", "lossy", "opt", "rule_inputs", "solve_lossy_beta", "target", "token_v1",
    "token_v2", "token_v3", "validate_alpha", "validate_beta", "verifier", "verify_block",
]
