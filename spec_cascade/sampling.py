"""Sampling distributions and speculative verification of one draft block.

Implements docs/method.md §2: temperature / top-k / top-p scaled distributions, drawing tokens
from them, and verifying a block of γ drafts toward a given target π (`verify_with_target`;
`spec_cascade.deferral.verify_block` builds π = T(q, p) from a rule and calls it): accept x̂_j
with prob min(1, π_j(x̂_j) / q̃_j(x̂_j)); at the first rejection emit from
norm(max(0, π_j − q̃_j)); if all γ are accepted emit a bonus from π_γ.

Everything here is pure and jittable. Temperature, top-p, α and β are traced values, so changing
them never recompiles; `top_k` and the rule name are static Python values.

Validation happens where values are concrete: a Python number or a concrete array is checked on
every call (negative temperature, top-p outside (0, 1], α outside the rule's range, ...); a traced
value cannot be checked and is used as given. Callers that jit these functions should validate
once up front with `validate_sampling_params` / `deferral.validate_alpha`, or call
`deferral.verify_block(..., checked=True)` outside jit, which additionally rejects NaN logits.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Denominators are clamped at this value (method.md §2), so a draft whose drafter probability
# underflowed cannot divide by zero.
PROB_FLOOR = 1e-10
# If the residual max(0, π − q̃) carries less mass than this, it is numerically meaningless
# (π ≈ q̃), so the token is sampled from π instead (method.md §2).
RESIDUAL_MIN_MASS = 1e-6
# Smallest temperature used as a divisor; keeps logits / T finite for tiny positive T.
_MIN_TEMPERATURE = 1e-20


# ----------------------------------------------------------------------------------------------
# Validation of concrete values
# ----------------------------------------------------------------------------------------------

def is_traced(x: Any) -> bool:
  """True when `x` is a JAX tracer (inside jit / vmap), i.e. its value cannot be inspected."""
  return isinstance(x, jax.core.Tracer)


def concrete_value(x: Any) -> np.ndarray | None:
  """`x` as a NumPy array when its value is known now, else None (traced)."""
  if x is None or is_traced(x):
    return None
  return np.asarray(x)


def validate_top_k(top_k: Any) -> int:
  """Checks the static top-k setting and returns it as int (0 = off)."""
  if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
    raise TypeError(
        f"top_k must be a Python int (0 = off), got {top_k!r} of type {type(top_k).__name__}; "
        "it is static (it fixes array shapes), so pass an int, not an array.")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
  return int(top_k)


def validate_sampling_params(temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0) -> None:
  """Raises ValueError for T < 0 / NaN, top-p outside (0, 1], top-k < 0.

  Traced temperature / top-p are skipped (they cannot be inspected); call this once with the
  concrete values before entering jit.
  """
  validate_top_k(top_k)
  t = concrete_value(temperature)
  if t is not None:
    if np.any(np.isnan(t)) or np.any(t < 0):
      raise ValueError(
          f"temperature must be >= 0 (0 = greedy argmax), got {t.tolist()}.")
  tp = concrete_value(top_p)
  if tp is not None:
    if np.any(np.isnan(tp)) or np.any(tp <= 0) or np.any(tp > 1):
      raise ValueError(
          f"top_p must lie in (0, 1] (1.0 = off), got {tp.tolist()}.")


def check_finite_logits(logits: Any, name: str = "logits") -> None:
  """Raises ValueError if concrete `logits` contain NaN (checked mode; forces a device sync).

  -inf is allowed (it masks a token); NaN and +inf are not.
  """
  if is_traced(logits):
    raise ValueError(
        f"checked mode needs concrete {name}; call it outside jax.jit / vmap "
        "(inside jit the NaN check cannot raise).")
  arr = np.asarray(logits, dtype=np.float32)
  bad = np.isnan(arr) | (arr == np.inf)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} contain {int(bad.sum())} NaN/+inf value(s) (first at index {first}); "
        "a model produced non-finite scores: check its inputs, parameters and dtype.")


# ----------------------------------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------------------------------

def _top_k_mask(z: jax.Array, k: int) -> jax.Array:
  """Sets every logit below the k-th largest to -inf. z: [..., V]. Ties at the k-th value stay."""
  kth = jax.lax.top_k(z, k)[0][..., -1:]
  return jnp.where(z >= kth, z, -jnp.inf)


def _top_p_truncate(probs: jax.Array, top_p: jax.Array) -> jax.Array:
  """Keeps the smallest most-probable set with mass ≥ top_p and renormalises. probs: [..., V].

  top_p: scalar or broadcastable to probs.shape[:-1]. Ties at the cut-off probability are kept,
  so the kept set is a function of the distribution, not of the sort order.
  """
  tp = top_p[..., None]

  def truncate(pr):
    srt = -jnp.sort(-pr, axis=-1)  # descending
    mass_before = jnp.cumsum(srt, axis=-1) - srt  # exclusive cumsum: nondecreasing -> prefix
    n_keep = jnp.maximum(jnp.sum(mass_before < tp, axis=-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(srt, n_keep - 1, axis=-1)
    kept = jnp.where(pr >= cutoff, pr, 0.0)
    out = kept / jnp.sum(kept, axis=-1, keepdims=True)
    # Rows with top_p >= 1 keep their probabilities bit for bit.
    return jnp.where(tp < 1.0, out, pr)

  # The sort is skipped at run time when no row truncates (the usual top_p = 1 case).
  return jax.lax.cond(jnp.any(top_p < 1.0), truncate, lambda pr: pr, probs)


def scaled_probs(logits: jax.Array, temperature: Any, top_k: int = 0,
                 top_p: Any = 1.0) -> jax.Array:
  """Temperature-scaled, optionally top-k / top-p truncated distribution.

  Args:
    logits: [..., V] scores (any float dtype; computed in float32). -inf masks a token.
    temperature: scalar or array broadcastable to logits.shape[:-1]; traced. T == 0 gives the
      one-hot distribution on argmax(logits) (first index on ties), i.e. greedy decoding.
    top_k: static Python int; 0 = off. Keeps the k largest logits (ties at the k-th kept).
    top_p: scalar or broadcastable to logits.shape[:-1]; traced; 1.0 = off. Keeps the smallest
      most-probable set whose (temperature-scaled, top-k truncated) mass is ≥ top_p.

  Returns:
    float32 [..., V] probabilities summing to 1 along the last axis.
  """
  top_k = validate_top_k(top_k)
  validate_sampling_params(temperature, top_k, top_p)
  logits = jnp.asarray(logits, jnp.float32)
  vocab = logits.shape[-1]
  t = jnp.asarray(temperature, jnp.float32)[..., None]
  greedy = t <= 0.0
  z = logits / jnp.where(greedy, 1.0, jnp.maximum(t, _MIN_TEMPERATURE))
  if 0 < top_k < vocab:
    z = _top_k_mask(z, top_k)
  probs = jax.nn.softmax(z, axis=-1)
  # A Python top_p >= 1 is statically off: no sort is even traced.
  if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
    probs = _top_p_truncate(probs, jnp.asarray(top_p, jnp.float32))
  onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), vocab, dtype=jnp.float32)
  return jnp.where(greedy, onehot, probs)


def categorical(key: jax.Array, weights: jax.Array) -> jax.Array:
  """Draws indices ∝ nonnegative (unnormalised) weights [..., V] -> int32 [...].

  Zero weights are never drawn. One key covers the whole array.
  """
  logw = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 0.0)), -jnp.inf)
  return jax.random.categorical(key, logw, axis=-1).astype(jnp.int32)


def sample(key: jax.Array, logits: jax.Array, temperature: Any, top_k: int = 0,
           top_p: Any = 1.0) -> jax.Array:
  """Draws tokens from `scaled_probs(logits, temperature, top_k, top_p)`.

  Args:
    key: one PRNG key (typed `jax.random.key` or raw uint32[2]) for the whole array; vmap over
      keys for per-row streams.
    logits: [..., V].

  Returns:
    int32 [...]; exactly argmax(logits) where T == 0.
  """
  return categorical(key, scaled_probs(logits, temperature, top_k, top_p))


# ----------------------------------------------------------------------------------------------
# Analytic quantities (method.md §2)
# ----------------------------------------------------------------------------------------------

def tv_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Total-variation distance Σ_v max(0, a(v) − b(v)) over the last axis. [..., V] -> [...]."""
  return jnp.sum(jnp.maximum(jnp.asarray(a) - jnp.asarray(b), 0.0), axis=-1)


def _check_gamma(gamma: Any) -> int:
  if isinstance(gamma, bool) or not isinstance(gamma, (int, np.integer)) or gamma < 0:
    raise ValueError(f"gamma (draft block size) must be an int >= 0, got {gamma!r}.")
  return int(gamma)


def expected_tokens_per_call(a: Any, gamma: int) -> jax.Array:
  """Expected tokens emitted per verifier call, (1 − a^{γ+1}) / (1 − a); γ + 1 at a = 1.

  a: acceptance rate(s) in [0, 1] (any shape).
  """
  gamma = _check_gamma(gamma)
  av = concrete_value(a)
  if av is not None and (np.any(np.isnan(av)) or np.any(av < 0) or np.any(av > 1)):
    raise ValueError(f"acceptance rate a must lie in [0, 1], got {av.tolist()}.")
  a = jnp.asarray(a, jnp.float32)
  # The geometric sum Σ_{i=0..γ} a^i is exact at a = 1, unlike the closed form.
  return sum(a ** i for i in range(gamma + 1)) + jnp.zeros_like(a)


def analytic_speedup(a: Any, gamma: int, c: Any) -> jax.Array:
  """Wall-clock speedup over the verifier alone, (1 − a^{γ+1}) / ((1 − a)(γc + 1)).

  c: drafter step cost / verifier step cost (≥ 0).
  """
  cv = concrete_value(c)
  if cv is not None and (np.any(np.isnan(cv)) or np.any(cv < 0)):
    raise ValueError(f"cost ratio c must be >= 0, got {cv.tolist()}.")
  return expected_tokens_per_call(a, gamma) / (_check_gamma(gamma) * jnp.asarray(c, jnp.float32)
                                               + 1.0)


# ----------------------------------------------------------------------------------------------
# Block verification
# ----------------------------------------------------------------------------------------------

@struct.dataclass
class VerifyResult:
  """Outcome of verifying one draft block per row (B rows, γ drafts).

  Attributes:
    num_accepted: int32 [B], 0..γ: leading drafts accepted.
    next_token: int32 [B]: token emitted after the accepted drafts: the residual sample at the
      first rejection, else the bonus token drawn from π_γ.
    tokens: int32 [B, γ+1]: all emitted tokens, drafts[:n] then next_token at n; 0 after.
    num_emitted: int32 [B] = num_accepted + 1.
    accepted: bool [B, γ]: draft j accepted (j < num_accepted).
    rejected: bool [B]: a draft was rejected (num_accepted < γ).
    from_residual: bool [B]: next_token was emitted at a rejection (== rejected).
    residual_fallback: bool [B]: at that rejection the residual had mass < RESIDUAL_MIN_MASS,
      so next_token was drawn from π instead.
    is_bonus: bool [B]: next_token is the bonus token from π_γ (== ~rejected).
    accept_prob: float32 [B, γ]: min(1, π_j(x̂_j) / q̃_j(x̂_j)).
    rejection_prob: float32 [B, γ+1]: TV(q̃_j, π_j), the chance a fresh draft at j is rejected.
    defer_weight: float32 [B, γ+1]: the rule's deferral at each position (docs/deferral_rules.md);
      positions 0..num_accepted were emitted.
  """
  num_accepted: jax.Array
  next_token: jax.Array
  tokens: jax.Array
  num_emitted: jax.Array
  accepted: jax.Array
  rejected: jax.Array
  from_residual: jax.Array
  residual_fallback: jax.Array
  is_bonus: jax.Array
  accept_prob: jax.Array
  rejection_prob: jax.Array
  defer_weight: jax.Array


def as_typed_keys(keys: jax.Array, batch: int) -> jax.Array:
  """Per-row keys: typed [B] (`jax.random.key`) or raw uint32 [B, 2] (`jax.random.PRNGKey`).

  Raw keys are read as the default threefry implementation; a typed key with the same key data
  gives identical draws.
  """
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    if keys.shape != (batch,):
      raise ValueError(f"keys must have shape [B]=({batch},) for typed keys, got {keys.shape}.")
    return keys
  if keys.dtype != jnp.uint32 or keys.shape != (batch, 2):
    raise ValueError(
        f"keys must be typed PRNG keys of shape ({batch},) (jax.random.split(jax.random.key(s), "
        f"B)) or raw uint32 keys of shape ({batch}, 2); got dtype {keys.dtype}, shape "
        f"{keys.shape}.")
  return jax.random.wrap_key_data(keys)


def verify_with_target(keys: jax.Array, drafts: jax.Array, drafter_probs: jax.Array,
                       target_probs: jax.Array,
                       defer_weight: jax.Array | None = None,
                       num_proposed: jax.Array | None = None) -> VerifyResult:
  """Speculative sampling of one block toward an arbitrary target (method.md §2).

  Args:
    keys: per-row keys, typed [B] or raw uint32 [B, 2] (see `as_typed_keys`).
    drafts: int32 [B, γ], drafts[:, j] ~ drafter_probs[:, j].
    drafter_probs: float32 [B, γ+1, V], the scaled drafter distributions q̃_j.
    target_probs: float32 [B, γ+1, V], the targets π_j.
    defer_weight: optional float32 [B, γ+1], copied into the result (zeros if None).
    num_proposed: optional int [B] in 1..γ: row b proposes only its first num_proposed[b]
      drafts (a dynamic draft length, decided from the drafter's side alone); after all of them
      are accepted the next token is drawn from π there, as after a full block. None = γ.

  Returns:
    VerifyResult. Each emitted token is distributed exactly as π at its position (given the
    prefix), whatever q̃ is.
  """
  drafts = jnp.asarray(drafts, jnp.int32)
  batch, gamma = drafts.shape
  keys = as_typed_keys(keys, batch)
  qt = jnp.asarray(drafter_probs, jnp.float32)
  pi = jnp.asarray(target_probs, jnp.float32)
  if defer_weight is None:
    defer_weight = jnp.zeros(qt.shape[:2], jnp.float32)

  vocab = qt.shape[-1]
  # One draw per row feeds both the γ acceptance tests and the Gumbel noise of the final
  # categorical: rows never depend on the batch they sit in, and a single random-bit generator
  # keeps compilation cheap. u ∈ [tiny, 1), so P(u < a) = a up to 1e-38 and log u is finite.
  u = jax.vmap(lambda k: jax.random.uniform(
      k, (gamma + vocab,), minval=jnp.finfo(jnp.float32).tiny))(keys)
  uniforms, gumbel = u[:, :gamma], -jnp.log(-jnp.log(u[:, gamma:]))

  q_draft = jnp.take_along_axis(qt[:, :gamma], drafts[..., None], axis=-1)[..., 0]
  pi_draft = jnp.take_along_axis(pi[:, :gamma], drafts[..., None], axis=-1)[..., 0]
  accept_prob = jnp.minimum(1.0, pi_draft / jnp.maximum(q_draft, PROB_FLOOR))
  # u < 1, so a = 1 always accepts; cumprod stops the block at the first rejection.
  proposed = (jnp.ones((batch, gamma), bool) if num_proposed is None
              else jnp.arange(gamma)[None, :] < jnp.asarray(num_proposed)[:, None])
  accepted = jnp.cumprod(((uniforms < accept_prob) & proposed).astype(jnp.int32),
                         axis=1).astype(bool)
  num_accepted = jnp.sum(accepted, axis=1, dtype=jnp.int32)
  rejected = num_accepted < (gamma if num_proposed is None
                             else jnp.asarray(num_proposed, jnp.int32))

  at_n = num_accepted[:, None, None]
  pi_n = jnp.take_along_axis(pi, at_n, axis=1)[:, 0]  # [B, V]
  qt_n = jnp.take_along_axis(qt, at_n, axis=1)[:, 0]
  residual = jnp.maximum(pi_n - qt_n, 0.0)
  use_residual = rejected & (jnp.sum(residual, axis=-1) >= RESIDUAL_MIN_MASS)
  weights = jnp.where(use_residual[:, None], residual, pi_n)
  # Gumbel-max: argmax(log w + G) ~ w / Σw exactly; zero weights are never drawn.
  log_weights = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 0.0)), -jnp.inf)
  next_token = jnp.argmax(log_weights + gumbel, axis=-1).astype(jnp.int32)

  positions = jnp.arange(gamma + 1)[None, :]
  padded_drafts = jnp.pad(drafts, ((0, 0), (0, 1)))
  tokens = jnp.where(positions < num_accepted[:, None], padded_drafts,
                     jnp.where(positions == num_accepted[:, None], next_token[:, None], 0))
  return VerifyResult(
      num_accepted=num_accepted,
      next_token=next_token,
      tokens=tokens.astype(jnp.int32),
      num_emitted=num_accepted + 1,
      accepted=accepted,
      rejected=rejected,
      from_residual=rejected,
      residual_fallback=rejected & ~use_residual,
      is_bonus=~rejected,
      accept_prob=accept_prob,
      rejection_prob=tv_distance(qt, pi),
      defer_weight=jnp.asarray(defer_weight, jnp.float32),
  )


__all__ = [
    "PROB_FLOOR", "RESIDUAL_MIN_MASS", "VerifyResult", "analytic_speedup", "as_typed_keys",
    "categorical", "check_finite_logits", "concrete_value",
    "expected_tokens_per_call", "is_traced", "sample", "scaled_probs", "tv_distance",
    "validate_sampling_params", "validate_top_k", "verify_with_target",
]

