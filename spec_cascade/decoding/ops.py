"""Small pure helpers of the decode loops: per-row keys, committing tokens, draws."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from spec_cascade import sampling
from spec_cascade.decoding.state import PAD_ID, DecodeSpec, DecodeState, Knobs

Array = jax.Array

def row_keys(seed: Array, example_ids: Array) -> Array:
  """[B] typed keys: fold_in(key(seed), example_id)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids)


def step_keys(keys: Array, steps: Array, num: int) -> Array:
  """[num, B] keys for each row's step `steps` [B] (its own count of loop steps, so a row's
  draws do not depend on when it entered the batch)."""
  keys = jax.vmap(lambda k, s: jax.random.split(jax.random.fold_in(k, s), num))(keys, steps)
  return jnp.swapaxes(keys, 0, 1)


def last_input(out: Array, length: Array) -> Array:
  """Decoder input at position `length`: out[length − 1], or BOS (0) when length = 0."""
  prev = jnp.take_along_axis(out, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
  return jnp.where(length > 0, prev, PAD_ID)


def commit(state: DecodeState, tokens: Array, num_new: Array, spec: DecodeSpec):
  """Appends tokens[:, :num_new] to active rows, cutting at the first EOS (spec.eos_id) and
  at spec.max_decode_length.

  tokens: int32 [B, K]; num_new: int32 [B] in 1..K. Returns (out, length, done, committed).
  """
  max_len = spec.max_decode_length
  k = tokens.shape[1]
  active = ~state.done
  pos = jnp.arange(k)[None, :]
  is_eos = (tokens == spec.eos_id) & (pos < num_new[:, None])
  first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, k + 1)
  n = jnp.minimum(jnp.minimum(num_new, first_eos), max_len - state.length)
  n = jnp.where(active, n, 0)
  masked = jnp.where(pos < n[:, None], tokens, PAD_ID).astype(jnp.int32)
  # Slots at and after `length` are still zero (nothing is written past the committed
  # length), so writing the zero-padded block keeps the buffer's tail zero.
  write = jax.vmap(lambda o, t, s: jax.lax.dynamic_update_slice(o, t, (s,)))
  out = jnp.where(active[:, None], write(state.out, masked, state.length), state.out)
  length = state.length + n
  done = state.done | (active & ((first_eos <= n) | (length >= max_len)))
  return out, length, done, n


def all_greedy(knobs: Knobs) -> Array:
  """bool []: every row decodes greedily (T = 0), so no random draw is needed."""
  return jnp.all(knobs.temperature <= 0.0)


def argmax(logits: Array, chunk: int = 64) -> Array:
  """First index of the maximum over the last axis: [..., V] → int32 [...].

  Equals jnp.argmax (and a draw at T = 0) for NaN-free logits, ties included; a row of NaNs
  gives index 0. On CPU, XLA's (value, index) argmax reduce took 0.9 ms for
  [32, 4224], and a max followed by a masked min over the whole row still 0.12 ms (the
  masked pass does not vectorise); this takes the max of each `chunk` of the row (a plain
  reduction), finds the first chunk holding the row's maximum, then the first index inside
  that one chunk: 0.035 / 0.064 / 0.087 ms for [8 / 32 / 48, 4224] instead of 0.038 / 0.109 /
  0.151 (bench/micro_ops.py, bench/RESULTS.md).
  """
  vocab = logits.shape[-1]
  pad = (-vocab) % chunk
  if pad:
    logits = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, pad)],
                     constant_values=-jnp.inf)
  chunks = logits.reshape(logits.shape[:-1] + (-1, chunk))        # [..., C, chunk]
  chunk_max = jnp.max(chunks, axis=-1)                            # [..., C]
  top = jnp.max(chunk_max, axis=-1, keepdims=True)                # [..., 1]
  num = chunk_max.shape[-1]

  def first(x, n):
    """First position along the last axis where x == top (n if none: a NaN row)."""
    hit = jnp.where(x == top, jnp.arange(n, dtype=jnp.float32), float(n))
    return jnp.min(hit, axis=-1).astype(jnp.int32)

  c = first(chunk_max, num)
  inside = jnp.take_along_axis(chunks, jnp.minimum(c, num - 1)[..., None, None], axis=-2)
  j = first(inside[..., 0, :], chunk)
  index = c * chunk + j
  # No hit (NaNs: XLA's max may skip or keep them) → 0, like the documented NaN row.
  return jnp.where((j < chunk) & (index < vocab), index, 0)


def draw(keys, logits: Array, knobs: Knobs, top_k: int) -> Array:
  """Per-row draws: keys () → [B] (a function, so keys are derived only when sampling),
  logits [B, V] → int32 [B].

  At T = 0 a draw is exactly argmax(logits) (sampling.sample's one-hot), so a runtime cond
  skips the softmax, the [B, V] Gumbel noise and the key derivation (threefry is the
  costliest part of a greedy step on CPU). Temperature stays traced: nothing recompiles.
  """
  def draw():
    return jax.vmap(lambda k, l: sampling.sample(k, l, knobs.temperature, top_k, knobs.top_p))(
        keys(), logits)
  with jax.named_scope("sample"):
    return jax.lax.cond(all_greedy(knobs), lambda: argmax(logits), draw)


# ----------------------------------------------------------------------------------------------
