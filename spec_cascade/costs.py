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

from spec_cascade.decoding import contract


def call_loop(bundle, inputs: np.ndarray, k: int, cache_length: int,
              iters: int) -> Callable[[], None]:
  """A function that starts the model's decoding state for `inputs` (T5: encoder and cache;
  decoder-only: prefill of the prompts) and then runs `iters` calls, each scoring k tokens per
  row, all in one compiled program (compiled and warmed up here; call it to time it), through
  the engine's model contract (`decoding.contract`). `iters` = 0 times the set-up alone, so a
  call costs (T(iters) − T(0)) / iters (`per_call_seconds`).

  bundle: (model, params), T5 or decoder-only; inputs: int32 [B, S] encoder tokens or
  right-padded prompts. The cache is made inside the
  program, as in `decoding.decode`: XLA then picks the cache layouts for the loop, which it
  cannot for a cache passed in as an argument (that cost 25-30 % more per call at batch 1 and
  8, bench/RESULTS.md). Each call writes k cache positions at an offset cycling through the
  cache, and feeds a token derived from the previous call's logits (so calls cannot be
  reordered or skipped).
  """
  model, params = bundle
  batch = inputs.shape[0]
  if cache_length < k + 1:
    raise ValueError(f"cache_length {cache_length} cannot hold a block of k = {k} tokens.")
  if iters < 0:
    raise ValueError(f"iters must be ≥ 0, got {iters}.")
  span = cache_length - k + 1

  @jax.jit
  def run(params, inputs):
    cache = contract.start("model", (model, params), inputs, cache_length)

    def body(i, carry):
      cache, tok = carry
      offsets = jnp.full((batch,), i % span, jnp.int32)
      logits, cache = contract.score("model", (model, params), cache, tok, offsets)
      return cache, (logits[..., 0] > 0).astype(jnp.int32) + 2
    # The result depends on the cache, so the set-up is never optimised away at iters = 0.
    cache, tok = jax.lax.fori_loop(0, iters, body, (cache, jnp.ones((batch, k), jnp.int32)))
    return tok, jax.tree_util.tree_map(lambda c: c.ravel()[0], cache)

  x = jnp.asarray(inputs)
  jax.block_until_ready(run(params, x))
  return lambda: jax.block_until_ready(run(params, x))


def interleaved(fns: dict, reps: int, *, warm: bool = True,
                order_seed: int | None = None) -> tuple[dict, dict[str, float]]:
  """Runs each fn once to warm up (unless warm=False), then `reps` rounds calling every fn
  once per round (so load changes on a shared machine hit all of them alike); with
  order_seed, each round calls them in a fresh random order (a fixed order lets whichever fn
  runs after a given one find its data in the caches). Returns ({name: last result},
  {name: median seconds}); reps ≥ 1 when warm=False."""
  if not warm and reps < 1:
    raise ValueError("interleaved(warm=False) needs reps ≥ 1 (nothing would run).")
  out = {k: f() for k, f in fns.items()} if warm else {}
  times = {k: [] for k in fns}
  rng = None if order_seed is None else np.random.default_rng(order_seed)
  names = list(fns)
  for _ in range(reps):
    for k in (names if rng is None else [names[i] for i in rng.permutation(len(names))]):
      t0 = time.perf_counter()
      out[k] = fns[k]()
      times[k].append(time.perf_counter() - t0)
  return out, {k: float(np.median(v)) for k, v in times.items()}


def per_call_seconds(loop_s: float, setup_s: float, iters: int) -> float:
  """A call's cost from a loop's time and its set-up's (iters = 0) time; ≥ 0."""
  return max(loop_s - setup_s, 0.0) / iters


def ratio(a: float, b: float) -> float:
  """a / b, or NaN where b is 0: a tiny model's call can vanish in timer noise (a loop timed no
  longer than its set-up), and a table should then say `nan`, not stop."""
  return a / b if b > 0 else float("nan")


def measure_cost_ratio(drafter, verifier, inputs: np.ndarray, cache_length: int,
                       reps: int = 20, iters: int = 16) -> dict[str, float]:
  """c = (drafter decode-step time) / (verifier decode-step time), one new token per row.

  inputs: int32 [B, S], the batch shape of interest. Each model's steps run `iters` at a time
  in a compiled loop (`call_loop`), minus the same program's set-up (encoder and cache) timed
  with no steps; the four programs are timed interleaved `reps` times (medians), so machine
  noise hits all of them alike.
  """
  if reps < 1 or iters < 1:
    raise ValueError(f"reps and iters must be ≥ 1, got {reps} and {iters}.")
  # On a busy machine a short loop can time at or below its set-up: measure again with longer
  # loops before giving up.
  for attempt in range(3):
    try:
      return _measure_cost_ratio(drafter, verifier, inputs, cache_length, reps,
                                 iters * 4 ** attempt)
    except _TooNoisy:
      if attempt == 2:
        raise


class _TooNoisy(RuntimeError):
  pass


def _measure_cost_ratio(drafter, verifier, inputs, cache_length, reps, iters):
  loops = {}
  for name, b in (("drafter", drafter), ("verifier", verifier)):
    loops[name] = call_loop(b, inputs, 1, cache_length, iters)
    loops[name + "_setup"] = call_loop(b, inputs, 1, cache_length, 0)
  _, t = interleaved(loops, reps)
  d = per_call_seconds(t["drafter"], t["drafter_setup"], iters)
  v = per_call_seconds(t["verifier"], t["verifier_setup"], iters)
  for name, sec in (("drafter", d), ("verifier", v)):
    if sec <= 0.0:
      raise _TooNoisy(f"the {name}'s decode steps timed at 0 s against its set-up (machine "
                      f"too noisy for {iters} calls per loop); measure again with more iters.")
  return {"c": d / v, "drafter_call_s": d, "verifier_call_s": v,
          "batch_size": int(inputs.shape[0]), "input_length": int(inputs.shape[1]),
          "cache_length": int(cache_length), "reps": int(reps), "calls_per_rep": int(iters)}
