"""What tiling the bfloat16 twins buys (`cpu_kernels.pack_bf16`: tiles of 64 columns whose K
rows are contiguous, against the row-major pairs before).

    python bench/tiled_weights.py [--pair DIR] [--task debian_ende] [--examples 16]
        [--gammas 1,2,3] [--rounds 2]

The committed pair is loaded twice in one process, its twins packed each way
(`cpu_kernels.TILED_BF16`), and every program compiled for each layout with its own program
cache. Then:

1. Products: the verifier's streamed decoder products (every twin outside the encoder, in
   order, each feeding the next so none overlaps), M rows at a time, in a compiled loop: ms per
   chain, GB/s of weights, and the tiles' speed-up; both layouts interleaved.
2. The verifier at batch 1 (`costs.call_loop`): a one-token step and v(k) = a call scoring k
   tokens / a one-token step, per layout.
3. Batch 1, each validation example alone, end to end (the paper's latency regime), greedy:
   the verifier alone and SpecDecode at each γ of `--gammas`, both layouts interleaved in a
   fresh random order per example, `--rounds` rounds (medians); same tokens (else FAIL).

Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import costs, infer, pretrained, programs  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
from spec_cascade.models import cpu_kernels  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position

LAYOUTS = ("rows", "tiles")


class Layout:
  """Runs the code with one twin layout, with that layout's own program cache."""

  caches = {m: programs.ProgramCache() for m in LAYOUTS}

  def __init__(self, layout: str):
    self.layout = layout

  def __enter__(self):
    self.saved = (cpu_kernels.TILED_BF16, programs.PROGRAMS)
    cpu_kernels.TILED_BF16 = self.layout == "tiles"
    programs.PROGRAMS = self.caches[self.layout]

  def __exit__(self, *exc):
    cpu_kernels.TILED_BF16, programs.PROGRAMS = self.saved


def decoder_twins(bundle) -> list:
  """The bfloat16 twins a decode step reads, in parameter order (the encoder's excluded)."""
  out = []

  def visit(path, leaf):
    if isinstance(leaf, cpu_kernels.StreamedKernel) and "encoder" not in jax.tree_util.keystr(
        path):
      out.append(leaf.bf16)
  jax.tree_util.tree_map_with_path(
      visit, bundle.params, is_leaf=lambda x: isinstance(x, cpu_kernels.StreamedKernel))
  return out


def chain_loop(twins: list, rows: int, iters: int):
  """A compiled loop of `iters` chains of the twins' products at `rows` rows → a thunk."""
  def chain(x, ws):
    acc = jnp.float32(0)
    for w in ws:
      # Each product's input depends on the previous output: products run one after another.
      y = cpu_kernels.matmul(jnp.broadcast_to(x[:, :1] + acc * 0, (rows, w.shape[0])), w)
      acc = acc + y[0, 0]
    return acc
  fn = jax.jit(lambda x, ws: jax.lax.fori_loop(0, iters, lambda i, a: a + chain(x + a * 0, ws),
                                               jnp.float32(0)))
  x = jnp.ones((rows, 8), jnp.float32)
  fn(x, twins).block_until_ready()
  return lambda: fn(x, twins).block_until_ready()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  side_by_side.add_arguments(parser, gammas="1,2,3")
  parser.add_argument("--reps", type=int, default=15, help="rounds of parts 1 and 2")
  parser.add_argument("--rows", default="1,2,3,4,8", help="part 1's row counts")
  args = parser.parse_args(argv)
  if not cpu_kernels.available():
    raise SystemExit("the few-row kernel is off on this machine: nothing to compare")
  pairs = {}
  for layout in LAYOUTS:
    with Layout(layout):
      pairs[layout] = pretrained.load_offline_pair(args.pair)[:2]
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, 0, vocab, args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  drafter, verifier = pairs["tiles"]
  print(f"drafter {drafter.model.num_params() / 1e6:.2f}M, verifier "
        f"{verifier.model.num_params() / 1e6:.2f}M; {args.task}, {len(xs)} validation examples, "
        f"inputs {args.input_length}, ≤ {args.max_decode_length} new tokens, greedy; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs")

  iters, rows = 20, [int(r) for r in args.rows.split(",")]
  fns = {}
  for layout in LAYOUTS:
    with Layout(layout):
      twins = decoder_twins(pairs[layout][1])
      for m in rows:
        fns[(layout, m)] = chain_loop(twins, m, iters)
  mb = sum(t.size for t in twins) * 2 / 1e6
  _, secs = costs.interleaved(fns, args.reps, order_seed=0)
  print(f"\n1. The verifier's {len(twins)} decoder products ({mb:.1f} MB of bfloat16), "
        f"medians of {args.reps} interleaved rounds\n")
  print("| rows M | rows ms | GB/s | tiles ms | GB/s | speed-up | tiles ms / tiles at M = 1 |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  one = secs[("tiles", rows[0])] / iters
  for m in rows:
    a, b = secs[("rows", m)] / iters, secs[("tiles", m)] / iters
    print(f"| {m} | {1e3 * a:.3f} | {mb / 1e3 / a:.1f} | {1e3 * b:.3f} | {mb / 1e3 / b:.1f} | "
          f"{a / b:.2f}× | {b / one:.2f} |")

  ks, cache_length, loops = (1, 2, 4), args.max_decode_length + 8, 48
  fns = {}
  for layout in LAYOUTS:
    with Layout(layout):
      for k in ks:
        for n in (loops, 0):
          fns[(layout, k, n)] = costs.call_loop(pairs[layout][1], xs[0], k, cache_length, n)
  _, secs = costs.interleaved(fns, args.reps, order_seed=0)
  print(f"\n2. The verifier at batch 1, compiled call loops, medians of {args.reps} rounds\n")
  print("| layout | one-token step ms | " + " | ".join(f"v({k})" for k in ks[1:]) + " |")
  print("|---|---:|" + "---:|" * (len(ks) - 1))
  for layout in LAYOUTS:
    per = {k: costs.per_call_seconds(secs[(layout, k, loops)], secs[(layout, k, 0)], loops)
           for k in ks}
    print(f"| {layout} | {1e3 * per[1]:.3f} | "
          + " | ".join(f"{per[k] / per[1]:.2f}" for k in ks[1:]) + " |")

  def run(layout, config, x, i):
    with Layout(layout):
      d, v = pairs[layout]
      return generate(d, v, x, example_ids=np.array([i]), **config)

  configs = side_by_side.methods(args.gammas, args.max_decode_length)
  res = side_by_side.timed_runs(LAYOUTS, configs, xs, args.rounds, run)
  print(f"\n3. batch 1, {len(xs)} examples one at a time, end to end, medians of "
        f"{args.rounds} rounds\n")
  side_by_side.before_after(res, "rows", "tiles", configs, ("rows", "tiles"))


if __name__ == "__main__":
  main()
