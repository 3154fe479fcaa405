"""Per-step model costs as the decode loop pays them, and the cost ratio c of a pair.

The engine runs every model call inside one compiled loop (`decoding.decode`), so a call's cost
there has no Python dispatch and no cache copy (the loop updates the cache in place). Timing
jitted calls one by one from Python would add both, and at batch 1 they dominate a small
drafter's step. These helpers time calls the way the loop makes them.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def call_loop(bundle, inputs: np.ndarray, k: int, cache_length: int,
              iters: int) -> Callable[[], None]:
  """A function that runs `iters` decode_block calls, each scoring k tokens per row, in one
  compiled loop (compiled and warmed up here; call it to time it).

  bundle: (T5Model, params); inputs: int32 [B, S] encoder tokens. Each call writes k cache
  positions at an offset cycling through the cache, and feeds a token derived from the previous
  call's logits (so calls cannot be reordered or skipped).
  """
  model, params = bundle
  batch = inputs.shape[0]
  if cache_length < k + 1:
    raise ValueError(f"cache_length {cache_length} cannot hold a block of k = {k} tokens.")
  encoded, mask = model.encode(params, jnp.asarray(inputs))
  cache = model.init_cache(params, encoded, mask, cache_length)
  span = cache_length - k + 1

  @jax.jit
  def run(params, cache):
    def body(i, carry):
      cache, tok = carry
      offsets = jnp.full((batch,), i % span, jnp.int32)
      logits, cache = model.decode_block(params, cache, tok, offsets)
      return cache, (logits[..., 0] > 0).astype(jnp.int32) + 2
    return jax.lax.fori_loop(0, iters, body, (cache, jnp.ones((batch, k), jnp.int32)))[1]

  jax.block_until_ready(run(params, cache))
  return lambda: jax.block_until_ready(run(params, cache))


def measure_cost_ratio(drafter, verifier, inputs: np.ndarray, cache_length: int,
                       reps: int = 20, iters: int = 16) -> dict[str, float]:
  """c = (drafter decode-step time) / (verifier decode-step time), one new token per row.

  inputs: int32 [B, S], the batch shape of interest. Each model's steps run `iters` at a time
  in a compiled loop (`call_loop`); the two loops are timed interleaved `reps` times (medians),
  so machine noise hits both alike.
  """
  if reps < 1 or iters < 1:
    raise ValueError(f"reps and iters must be ≥ 1, got {reps} and {iters}.")
  loops = {name: call_loop(b, inputs, 1, cache_length, iters)
           for name, b in (("drafter", drafter), ("verifier", verifier))}
  times = {name: [] for name in loops}
  for _ in range(reps):
    for name, run in loops.items():
      t0 = time.perf_counter()
      run()
      times[name].append((time.perf_counter() - t0) / iters)
  d, v = float(np.median(times["drafter"])), float(np.median(times["verifier"]))
  return {"c": d / v, "drafter_call_s": d, "verifier_call_s": v,
          "batch_size": int(inputs.shape[0]), "input_length": int(inputs.shape[1]),
          "cache_length": int(cache_length), "reps": int(reps), "calls_per_rep": int(iters)}
