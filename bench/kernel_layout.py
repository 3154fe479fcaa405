"""Would another weight layout make a verify call cheaper on this CPU? (A negative result.)

    python bench/kernel_layout.py [--verifier V] [--reps 9]

A verify call scores γ + 1 tokens, so each dense layer multiplies [γ + 1, d] rows by its weight
matrix. XLA's CPU dot streams the weights fast for one row (a matrix-vector product) but runs a
general matrix product for 2-8 rows, which costs up to twice as much (bench/block_cost.py
--matmuls), so the call costs v(γ + 1) = 1.3-2.1 one-token steps instead of ≈ 1. This script
tries computing the few-row products from weights stored transposed ([out, in]), where each
output element is one contiguous dot of a weight row with an input row:

1. a chain of [M, 256] × [256, 1024] and back (26 pairs, 52 MB of float32) as the standard
   dot, as a multiply-reduce over [out, in] weights, and as a dot of the [out, in] weights with
   the transposed rows;
2. the same two alternatives in a real verifier (its Dense layers swapped for ones holding
   [out, in] kernels; a one-row call stays a dot): v(k) = the call scoring k tokens over a
   one-token step, both in compiled loops (`costs.call_loop`), standard layout alongside.

Each variant runs in its own process, alternating, so machine noise hits them alike.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = ("standard", "multiply_reduce", "transposed_dot")


def few_rows(variant: str):
  """x [..., K] @ kernel → [..., N] with kernel stored [N, K] (any variant but 'standard')."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def mm(x, wt):
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 1 or x2.shape[0] > 8:  # one row, or a compute-bound block: a dot
      y = jax.lax.dot_general(x2, wt, (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
    elif variant == "multiply_reduce":
      y = jnp.sum(wt[:, None, :] * x2[None], axis=-1).T
    else:
      y = jnp.dot(wt, x2.T, preferred_element_type=jnp.float32).T
    return y.reshape(x.shape[:-1] + (wt.shape[0],))
  return mm


def chain_ms(variant: str, rows: int, reps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ws = []
  for _ in range(26):
    ws.append(rng.standard_normal((256, 1024)).astype(np.float32) * 0.05)
    ws.append(rng.standard_normal((1024, 256)).astype(np.float32) * 0.05)
  if variant == "standard":
    mm = lambda x, w: x @ w
  else:
    ws = [w.T.copy() for w in ws]
    mm = few_rows(variant)
  ws = [jnp.asarray(w) for w in ws]

  @jax.jit
  def run(x, ws):
    for a, b in zip(ws[0::2], ws[1::2]):
      x = x + mm(jax.nn.gelu(mm(x, a)), b) * 0.1
    return x

  x = jnp.ones((rows, 256), jnp.float32)
  jax.block_until_ready(run(x, ws))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(run(x, ws))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def model_v(variant: str, verifier: str, reps: int) -> dict:
  """{'step_ms': one-token step, k: v(k)} for the verifier with its kernels in `variant`."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spec_cascade import costs, infer, pretrained  # pylint: disable=g-import-not-at-top
  from spec_cascade.models import layers  # pylint: disable=g-import-not-at-top
  _, _, make_inputs = pretrained.offline_pair_for_bench(task="debian_ende")
  model, params = infer.load_bundle(verifier)
  if variant != "standard":
    mm = few_rows(variant)

    class TransposedDense(layers.Dense):  # pylint: disable=too-few-public-methods
      @nn.compact
      def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (self.features, x.shape[-1]),
                            jnp.float32)
        return mm(x, kernel).astype(self.dtype)

    layers.Dense = TransposedDense  # the model's layers look Dense up when they are built
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x.T if getattr(path[-1], "key", None) == "kernel" else x, params)
  x = make_inputs(1, 64)
  iters, ks = 48, (1, 2, 4, 6)
  fns = {(k, n): costs.call_loop((model, params), x, k, 72, n) for k in ks for n in (0, iters)}
  _, t = costs.interleaved(fns, reps, order_seed=0)
  per = {k: costs.per_call_seconds(t[(k, iters)], t[(k, 0)], iters) for k in ks}
  return {"step_ms": 1e3 * per[1], **{k: costs.ratio(per[k], per[1]) for k in ks[1:]}}


def in_subprocess(args: list[str]) -> str:
  out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                       text=True, cwd=ROOT)
  return out.stdout.strip().splitlines()[-1]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--verifier", default="spec_cascade/assets/offline_pair/verifier")
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--rounds", type=int, default=2, help="processes per variant")
  parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # (table, variant): a child
  args = parser.parse_args(argv)
  if args._one:  # pylint: disable=protected-access
    table, variant = args._one  # pylint: disable=protected-access
    if table == "chain":
      print(" ".join(f"{chain_ms(variant, m, args.reps):.3f}" for m in (1, 2, 4, 8)))
    else:
      r = model_v(variant, args.verifier, args.reps)
      print(" ".join(f"{r[k]:.3f}" for k in ("step_ms", 2, 4, 6)))
    return
  print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of {args.reps} "
        f"runs, best of {args.rounds} processes per variant")
  for table, head in (("chain", "| chain of 52 dots (ms) | M = 1 | M = 2 | M = 4 | M = 8 |"),
                      ("model", f"| {args.verifier} | step ms | v(2) | v(4) | v(6) |")):
    best = {}
    for _ in range(args.rounds):
      for variant in VARIANTS:
        vals = [float(v) for v in in_subprocess(["--_one", table, variant, "--reps",
                                                 str(args.reps), "--verifier",
                                                 args.verifier]).split()]
        best[variant] = vals if variant not in best else list(np.minimum(best[variant], vals))
    print(f"\n{head}\n|---|---:|---:|---:|---:|")
    for variant in VARIANTS:
      print(f"| {variant} | " + " | ".join(f"{v:.2f}" for v in best[variant]) + " |")


if __name__ == "__main__":
  main()
