"""Parallel verification cost: latency of one decode call scoring k new tokens vs k = 1.

    python bench/decode_block_latency.py [--sizes tiny,mini] [--batches 1,8] [--max_k 8]

Prints, per (size, batch), the median wall-clock per call for k = 1..max_k and its
ratio to k = 1, measured interleaved in one run so machine noise hits all k alike.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade.models import T5Model, get_config


def measure(size: str, batch: int, max_k: int, reps: int, cache_len: int = 128,
            offset: int = 48, input_len: int = 64):
  model = T5Model(get_config(size))
  params = model.init_params(jax.random.key(0))
  inputs = jnp.asarray(np.random.default_rng(0).integers(2, 100, (batch, input_len)),
                       jnp.int32)
  encoded, mask = model.encode(params, inputs)
  cache = model.init_cache(params, encoded, mask, cache_len)
  step = jax.jit(model.decode_block)
  offsets = jnp.full((batch,), offset, jnp.int32)
  calls = {}
  for k in range(1, max_k + 1):
    tokens = jnp.ones((batch, k), jnp.int32)
    jax.block_until_ready(step(params, cache, tokens, offsets))  # compile
    calls[k] = (tokens,)
  times = {k: [] for k in calls}
  for _ in range(reps):
    for k, (tokens,) in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, cache, tokens, offsets))
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes", default="tiny,mini")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--max_k", type=int, default=8)
  parser.add_argument("--reps", type=int, default=50)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}")
  print("size  batch  " + "  ".join(f"k={k:<5d}" for k in range(1, args.max_k + 1)))
  for size in args.sizes.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      med = measure(size, batch, args.max_k, args.reps)
      base = med[1]
      print(f"{size:5s} {batch:5d}  " + "  ".join(f"{med[k] / base:7.2f}" for k in med)
            + f"   (k=1: {base * 1e3:.2f} ms/call)")


if __name__ == "__main__":
  main()
