"""Small ops of the decode loop, in the forms we tried, each timed inside a compiled loop.

    python bench/micro_ops.py [--reps 5] [--iters 300]

* attention: `layers.dot_product_attention` (heads-leading matmuls, q and output transposed)
  vs the earlier form whose second einsum produced [B, Q, H, D] directly, for a verifier block
  (mini: 4 heads × 64, cache 71) of Q = 1 and 6 tokens at batch 1, 8 and 32;
* argmax: `decoding.argmax` (64-wide chunks) vs a max followed by a masked min over the whole
  row (the earlier form) and `jnp.argmax`, for [B, 4224] rows;
* dense: a float32 matmul vs bfloat16 inputs with a bfloat16 result and with a float32 result
  (`layers.matmul`, what T5Config.matmul_dtype='bfloat16' runs), for a verifier output layer;
* verify dots: the float32 dots of a mini verifier's 6-token verify at batch 8 (48 rows:
  attention projections, the gated MLP's in and out, the output layer) in ms and GFLOP/s.
  Run it again under `taskset -c 0` to see what the second core adds to each (on the 2-core
  box: 1.05–1.3× for the projections and the MLP, 1.6× for the output layer, where a 2048²
  matmul gets 1.9×).

Each op runs `iters` times in one `lax.fori_loop` (its input nudged by the carry so nothing is
hoisted); medians over `reps` runs; results are checked against the reference form.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
from spec_cascade import decoding  # pylint: disable=g-import-not-at-top,wrong-import-position
from spec_cascade.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position


def attention_output_first(q, k, v, bias):
  """The earlier form: the second matmul writes [B, Q, H, D] itself."""
  logits = jnp.einsum("bqhd,bhdk->bhqk", q, k)
  return jnp.einsum("bhqk,bhkd->bqhd", jax.nn.softmax(logits + bias, axis=-1), v)


def argmax_masked_min(logits):
  """The earlier form: row max, then the smallest index holding it over the whole row."""
  vocab = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)
  index = jnp.arange(vocab, dtype=jnp.float32)
  return jnp.min(jnp.where(logits == top, index, float(vocab)), axis=-1).astype(jnp.int32)


def time_in_loop(fn, args, iters: int, reps: int) -> float:
  """Median seconds per call of fn(*args) over `reps` runs of a compiled loop of `iters`."""
  def loop(*args):
    def body(_, acc):
      out = fn(args[0] + acc * 1e-9, *args[1:])
      return acc + jnp.sum(out).astype(jnp.float32) * 0.0
    return jax.lax.fori_loop(0, iters, body, jnp.float32(0))
  run = jax.jit(loop)
  jax.block_until_ready(run(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(run(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)) / iters


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--iters", type=int, default=300)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  heads, head_dim, length = 4, 64, 71
  print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}; ms per call, median of "
        f"{args.reps} loops of {args.iters}")
  print("\n| attention: batch | Q | output-first ms | heads-leading (ours) ms | ratio |")
  print("|---|---|---|---|---|")
  for batch in (1, 8, 32):
    for q_len in (1, 6):
      q = jnp.asarray(rng.normal(size=(batch, q_len, heads, head_dim)), jnp.float32)
      k = jnp.asarray(rng.normal(size=(batch, heads, head_dim, length)), jnp.float32)
      v = jnp.asarray(rng.normal(size=(batch, heads, length, head_dim)), jnp.float32)
      bias = jnp.asarray(rng.normal(size=(batch, heads, q_len, length)), jnp.float32)
      ours = lambda q, k, v, b: layers.dot_product_attention(q, k, v, b, jnp.float32)
      np.testing.assert_allclose(ours(q, k, v, bias), attention_output_first(q, k, v, bias),
                                 atol=1e-5, rtol=1e-5)
      old = time_in_loop(attention_output_first, (q, k, v, bias), args.iters, args.reps)
      new = time_in_loop(ours, (q, k, v, bias), args.iters, args.reps)
      print(f"| {batch} | {q_len} | {old * 1e3:.4f} | {new * 1e3:.4f} | {old / new:.2f}× |",
            flush=True)
  print("\n| argmax: rows × 4224 | jnp.argmax ms | max + masked min ms | chunked (ours) ms |")
  print("|---|---|---|---|")
  for rows in (1, 8, 32, 48):
    x = jnp.asarray(rng.normal(size=(rows, 4224)), jnp.float32)
    want = np.argmax(np.asarray(x), axis=-1)
    for f in (decoding.argmax, argmax_masked_min):  # pylint: disable=protected-access
      np.testing.assert_array_equal(f(x), want)
    t = [time_in_loop(f, (x,), args.iters, args.reps)
         for f in (lambda x: jnp.argmax(x, axis=-1), argmax_masked_min,
                   decoding.argmax)]  # pylint: disable=protected-access
    print(f"| {rows} | {t[0] * 1e3:.4f} | {t[1] * 1e3:.4f} | {t[2] * 1e3:.4f} |", flush=True)
  print("\n| dense: rows × 256 @ 256 × 4224 | float32 ms | bf16 → bf16 ms | bf16 → float32 "
        "(`layers.matmul`) ms | float32 / bf16 → float32 |")
  print("|---|---|---|---|---|")
  w = jnp.asarray(rng.normal(size=(256, 4224)), jnp.float32)
  w16 = w.astype(jnp.bfloat16)
  for rows in (1, 8, 48, 192):
    x = jnp.asarray(rng.normal(size=(rows, 256)), jnp.float32)
    forms = (lambda x, w: x @ w, lambda x, w: x.astype(jnp.bfloat16) @ w,
             lambda x, w: layers.matmul(x, w, jnp.float32, jnp.bfloat16))
    ref = np.asarray(forms[0](x, w))
    for f in forms[1:]:  # bfloat16 inputs: 8 bits of mantissa, so about 1 % of the scale
      np.testing.assert_allclose(np.asarray(f(x, w16), np.float32), ref,
                                 atol=0.02 * np.abs(ref).max())
    t = [time_in_loop(f, (x, ww), args.iters, args.reps) for f, ww in zip(forms, (w, w16, w16))]
    print(f"| {rows} | {t[0] * 1e3:.4f} | {t[1] * 1e3:.4f} | {t[2] * 1e3:.4f} | "
          f"{t[0] / t[2]:.2f}× |", flush=True)
  print(f"\n| verify dot (48 rows), {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable "
        "| float32 ms | GFLOP/s |")
  print("|---|---|---|")
  for name, k, n in (("q/k/v/o projection", 256, 256), ("MLP in (wi_0 or wi_1)", 256, 640),
                     ("MLP out (wo)", 640, 256), ("output layer", 256, 4224)):
    x = jnp.asarray(rng.normal(size=(48, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
    t = time_in_loop(lambda x, w: x @ w, (x, w), args.iters, args.reps)
    print(f"| {name}: 48 × {k} @ {k} × {n} | {t * 1e3:.4f} | {2 * 48 * k * n / t / 1e9:.0f} |",
          flush=True)


if __name__ == "__main__":
  main()
