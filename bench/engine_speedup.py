"""Speculative decoding speed-up over verifier-only decoding, measured vs analytic.

    python bench/engine_speedup.py [--pair synthetic|offline] [--batches 1,8,32] [--gammas 1,3,5,7]

For each batch size and γ: tokens/s of greedy SpecDecode and of greedy verifier-only
decoding on the same inputs (outputs must be identical, else the benchmark fails), the
measured speed-up, and the analytic speed-up from the measured acceptance rate a and the
measured per-call costs at that batch size:

    analytic = E[tokens per block] · t_v(1) / (γ · t_d(1) + t_v(γ + 1)),
    E[tokens per block] = (1 − a^(γ+1)) / (1 − a)

where t_d(1) is a drafter decode call (SpecDecode makes γ per block), t_v(k) a verifier call
scoring k tokens. efficiency = measured / analytic (end to end: encoders included here; see
bench/hf_peer.py for the decode-phase comparison).

The `synthetic` pair needs no training (bench/hf_peer.py `synthetic_pair`): a `tiny`-shaped
drafter (d128, 2+2) embedded exactly into a `mini`-shaped verifier (d256, 4+4) plus
`--noise` × a random init, so the two agree on most greedy tokens and have the real sizes'
costs. Per-call costs are measured inside a compiled loop (no per-call dispatch).
`offline` loads the committed offline default pair (needs `spec_cascade.pretrained`).

`--mesh` splits each batch over all jax devices (`generate(mesh=...)`); on a CPU, start with
XLA_FLAGS=--xla_force_host_platform_device_count=N to get one device per core. The analytic
columns are then left out (the per-call costs are single-device measurements).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (adds the repo root)
from hf_peer import loop_call_cost as call_cost  # pylint: disable=g-import-not-at-top

from spec_cascade.decoding import generate  # pylint: disable=g-import-not-at-top
from spec_cascade.models import T5Model  # pylint: disable=g-import-not-at-top


def timed(fn, trials: int):
  fn()  # compile + warm
  best = []
  out = None
  for _ in range(trials):
    out = fn()
    best.append(out.wall_s)
  return out, float(np.median(best))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--pair", default="synthetic", choices=["synthetic", "offline"])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--gammas", default="1,3,5,7")
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--trials", type=int, default=3)
  parser.add_argument("--noise", type=float, default=0.02)
  parser.add_argument("--matmul_dtype", default=None, choices=[None, "bfloat16"],
                      help="T5Config.matmul_dtype for both models, parameters stored in it: "
                      "bfloat16 matmul inputs, float32 accumulation (greedy SpecDecode then "
                      "equals the verifier only up to bfloat16 rounding: the rows that agree "
                      "are reported, not required)")
  parser.add_argument("--mesh", action="store_true",
                      help="data-parallel over all jax devices (see the module docstring)")
  args = parser.parse_args()
  mesh = None
  if args.mesh:
    from spec_cascade import parallel  # pylint: disable=g-import-not-at-top
    mesh = parallel.make_mesh()
  if args.pair == "synthetic":
    drafter, verifier = hf_peer.synthetic_pair(args.noise)
    vocab = drafter.model.config.vocab_size
    make_inputs = lambda b: hf_peer.random_inputs(b, 64, vocab, seed=b)
  else:
    try:
      from spec_cascade import pretrained  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit("--pair offline needs spec_cascade.pretrained (the committed offline "
                       f"pair), which this checkout does not have ({e}).") from e
    drafter, verifier, make_inputs = pretrained.offline_pair_for_bench()
  if args.matmul_dtype:  # parameters stored in it too, as a bfloat16 checkpoint restores
    drafter, verifier = (hf_peer.Bundle(
        T5Model(b.model.config.replace(matmul_dtype=args.matmul_dtype)),
        jax.tree_util.tree_map(lambda p: jnp.asarray(p, args.matmul_dtype), b.params))
        for b in (drafter, verifier))
  print(f"jax {jax.__version__}; {jax.device_count()} device(s), mesh={args.mesh}; "
        f"pair={args.pair}; drafter {drafter.model.num_params()/1e6:.1f}M "
        f"params, verifier {verifier.model.num_params()/1e6:.1f}M; greedy; "
        f"max_decode_length={args.max_decode_length}; matmul_dtype={args.matmul_dtype}")
  print(f"{'batch':>5} {'γ':>2} {'accept':>6} {'tok/call':>8} {'c':>5} {'verif tok/s':>11} "
        f"{'spec tok/s':>10} {'speedup':>7} {'analytic':>8} {'effic.':>6}")
  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    x = make_inputs(batch)
    kw = dict(temperature=0.0, max_decode_length=args.max_decode_length, mesh=mesh)
    v_out, v_time = timed(lambda: generate(drafter, verifier, x, method="verifier", **kw),
                          args.trials)
    t_d1 = t_v1 = None
    if mesh is None:
      t_d1 = call_cost(drafter, x, 1)
      t_v1 = call_cost(verifier, x, 1)
    for gamma in (int(g) for g in args.gammas.split(",")):
      s_out, s_time = timed(lambda: generate(drafter, verifier, x, method="spec_decode",
                                             num_draft_tokens=gamma, **kw), args.trials)
      same = float(np.mean([np.array_equal(a, b) for a, b in zip(s_out.tokens, v_out.tokens)]))
      if same < 1.0 and not args.matmul_dtype:
        raise SystemExit(f"FAIL: greedy SpecDecode differs from the verifier at batch {batch}, "
                         f"γ {gamma}")
      if same < 1.0:
        print(f"  (bfloat16 rounding: {same:.0%} of rows identical to the verifier's)")
      c = s_out.counters
      a = hf_peer.acceptance_rate(c)
      tokens = v_out.lengths.sum()
      measured = v_time / s_time
      per_block = c["output_tokens"].sum() / c["blocks"].sum()
      c_col, analytic_col, eff_col = f"{'–':>5}", f"{'–':>8}", f"{'–':>6}"
      analytic = None
      if mesh is None:
        t_vk = call_cost(verifier, x, gamma + 1)
        analytic = hf_peer.analytic_bound(float(a), gamma, t_d1, t_v1, t_vk)
        c_col, analytic_col = f"{t_d1 / t_v1:5.2f}", f"{analytic:8.2f}"
        eff_col = f"{measured / analytic:6.2f}"
      print(f"{batch:5d} {gamma:2d} {a:6.2f} {per_block:8.2f} {c_col} {tokens / v_time:11.0f} "
            f"{tokens / s_time:10.0f} {measured:7.2f} {analytic_col} {eff_col}", flush=True)
      rows.append((batch, gamma, a, measured, analytic))
  return rows


if __name__ == "__main__":
  main()
