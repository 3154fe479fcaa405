"""A change to the batch-1 decode step, off and on side by side in one process.

    python bench/step_variants.py [--change tiles] [--pair DIR] [--grow_verifier 16x2560x8+24]
        [--matmul_dtype bfloat16]
        [--task debian_ende] [--examples 16] [--gammas 1,2,3] [--rounds 2]

Changes (each a module flag read when params are streamed and programs traced; only
benchmarks turn them off; add the next one to CHANGES):
  tiles       bfloat16 twins in tiles of 64 columns whose K rows are contiguous
              (`cpu_kernels.TILED_BF16`), against the row-major pairs before.
  few_tokens  a step's or verify call's attention and embedding lookup as one kernel call
              each (`cpu_kernels.ATTENTION_KERNEL`, `LOOKUP_KERNEL`), against XLA's ops.
  attention_split  the attention kernel's (batch row, head) units split between two threads
              (`cpu_kernels.SPLIT_ATTENTION`), against one (batches: `--batch`).

The committed pair is loaded once per setting (its twins packed for it), and every program
compiled for each setting with its own program cache. Then:

1. (tiles only) Products: the verifier's streamed step products (every twin a decode step
   reads, in order, each feeding the next so none overlaps), M rows at a time, in a compiled
   loop: ms per chain, GB/s of weights, and the speed-up; both layouts interleaved. Then, at
   `--xla_rows`, the tiled chain against XLA's dot over float32 copies of the same weights.
2. The verifier at batch 1 (`costs.call_loop`): a one-token step and v(k) = a call scoring k
   tokens / a one-token step, per setting, interleaved.
3. Batch 1, each validation example alone, end to end (the paper's latency regime), greedy:
   the verifier alone and SpecDecode at each γ of `--gammas`, both settings interleaved in a
   fresh random order per example, `--rounds` rounds (medians); same tokens (else FAIL).

Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import costs, infer, pretrained, programs  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
from spec_cascade.models import cpu_kernels  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position

SETTINGS = ("off", "on")
# change → module flags it sets: (module, flag, its value when off, when on)
CHANGES = {"tiles": [(cpu_kernels, "TILED_BF16", False, True)],
           "few_tokens": [(cpu_kernels, "ATTENTION_KERNEL", False, True),
                          (cpu_kernels, "LOOKUP_KERNEL", False, True)],
           "attention_split": [(cpu_kernels, "SPLIT_ATTENTION", False, True)]}


class Setting:
  """Runs the code with a change off or on, with that setting's own program cache."""

  caches = {m: programs.ProgramCache() for m in SETTINGS}
  change = "tiles"

  def __init__(self, setting: str):
    self.setting = setting

  def __enter__(self):
    flags = CHANGES[self.change]
    self.saved = ([getattr(module, flag) for module, flag, _, _ in flags], programs.PROGRAMS)
    for module, flag, off, on in flags:
      setattr(module, flag, on if self.setting == "on" else off)
    programs.PROGRAMS = self.caches[self.setting]

  def __exit__(self, *exc):
    for (module, flag, _, _), value in zip(CHANGES[self.change], self.saved[0]):
      setattr(module, flag, value)
    programs.PROGRAMS = self.saved[1]


def step_twins(bundle) -> list:
  """The bfloat16 twins a decode step reads, in parameter order."""
  out = []

  def visit(path, leaf):
    keys = [getattr(p, "key", "") for p in path]
    # The cross-attention keys and values are computed once per input, not per step.
    once = "encoder_decoder_attention" in keys and ("key" in keys or "value" in keys)
    if isinstance(leaf, cpu_kernels.StreamedKernel) and keys[0] != "encoder" and not once:
      out.append(leaf.bf16)
  jax.tree_util.tree_map_with_path(
      visit, bundle.params, is_leaf=lambda x: isinstance(x, cpu_kernels.StreamedKernel))
  return out


def chain_loop(twins: list, rows: int, iters: int, xla: bool = False):
  """A compiled loop of `iters` chains of the twins' products at `rows` rows → a thunk; with
  xla=True the twins are float32 weights multiplied by XLA's dot."""
  def chain(x, ws):
    acc = jnp.float32(0)
    for w in ws:
      # Each product's input depends on the previous output: products run one after another.
      xi = jnp.broadcast_to(x[:, :1] + acc * 0, (rows, w.shape[0]))
      y = jnp.dot(xi, w) if xla else cpu_kernels.matmul(xi, w)
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
  parser.add_argument("--change", default="tiles", choices=sorted(CHANGES))
  parser.add_argument("--batch", type=int, default=1,
                      help="parts 2 and 3 at this batch: the examples in consecutive batches")
  parser.add_argument("--xla_rows", default="8,16,32", help="tiles: rows at which the tiled "
                      "kernel's chain is also timed against XLA's float32 dot ('' skips)")
  parser.add_argument("--grow_verifier", default=None, metavar="HEADSxMLPxENC+DEC",
                      help="the committed verifier grown function-preservingly to this size "
                           "(bench/verifier_scale.py)")
  parser.add_argument("--matmul_dtype", default=None, help="'bfloat16': bfloat16 matmul inputs")
  args = parser.parse_args(argv)
  Setting.change = args.change
  if not cpu_kernels.available():
    raise SystemExit("the few-row kernel is off on this machine: nothing to compare")
  pairs = {}
  for setting in SETTINGS:
    with Setting(setting):
      pairs[setting] = pretrained.load_offline_pair(args.pair,
                                                    matmul_dtype=args.matmul_dtype)[:2]
      if args.grow_verifier:
        import verifier_scale  # pylint: disable=import-outside-toplevel
        pairs[setting] = (pairs[setting][0], verifier_scale.grown_offline_verifier(
            args.grow_verifier, args.pair, args.matmul_dtype))
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, 0, vocab, args.input_length)
  if args.batch > 1:
    batches = infer.make_batches(data, args.batch)
    xs, ids = [b.inputs for b in batches], [b.example_ids for b in batches]
  else:
    xs, ids = [x for x, _ in infer.one_at_a_time(data)], None
  side_by_side.header(*pairs["on"], args, len(data.examples),
                      f"; change: {args.change}; batch {args.batch}")
  if args.change == "tiles":
    products(pairs, args)
    if args.xla_rows:
      against_xla(pairs["on"][1], [int(r) for r in args.xla_rows.split(",")], args.reps)
  step_costs(pairs, xs[0], args)

  configs, res = side_by_side.decode_all(pairs, Setting, xs, args, generate, ids)
  print(f"\n3. batch {args.batch}, {len(data.examples)} examples, end to end, medians of "
        f"{args.rounds} rounds\n")
  side_by_side.before_after(res, "off", "on", configs, (f"{args.change} off", "on"))


def products(pairs, args) -> None:
  """Part 1: the step's product chain in both layouts."""
  iters, rows = 20, [int(r) for r in args.rows.split(",")]
  fns = {}
  for setting in SETTINGS:
    with Setting(setting):
      twins = step_twins(pairs[setting][1])
      for m in rows:
        fns[(setting, m)] = chain_loop(twins, m, iters)
  mb = sum(t.size for t in twins) * 2 / 1e6
  _, secs = costs.interleaved(fns, args.reps, order_seed=0)
  print(f"\n1. The verifier's {len(twins)} step products ({mb:.1f} MB of bfloat16), "
        f"medians of {args.reps} interleaved rounds\n")
  print("| rows M | rows ms | GB/s | tiles ms | GB/s | speed-up | tiles ms / tiles at M = 1 |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  one = secs[("on", rows[0])] / iters
  for m in rows:
    a, b = secs[("off", m)] / iters, secs[("on", m)] / iters
    print(f"| {m} | {1e3 * a:.3f} | {mb / 1e3 / a:.1f} | {1e3 * b:.3f} | {mb / 1e3 / b:.1f} | "
          f"{a / b:.2f}× | {b / one:.2f} |")


def against_xla(verifier, rows: list, reps: int) -> None:
  """Part 1b: the tiled chain against XLA's dot over the float32 copies (where products of
  more than `cpu_kernels.MAX_BF16_ROWS` rows go)."""
  iters, fns = 10, {}
  twins = step_twins(verifier)
  f32 = [cpu_kernels.unpack_bf16(w).astype(jnp.float32) for w in twins]
  for m in rows:
    fns[("kernel", m)] = chain_loop(twins, m, iters)
    fns[("xla", m)] = chain_loop(f32, m, iters, xla=True)
  _, secs = costs.interleaved(fns, reps, order_seed=0)
  print(f"\n1b. The same products, tiled kernel against XLA's float32 dot, medians of {reps} "
        "interleaved rounds\n")
  print("| rows M | XLA's dot ms | kernel ms | kernel speed-up |")
  print("|---:|---:|---:|---:|")
  for m in rows:
    a, b = secs[("xla", m)] / iters, secs[("kernel", m)] / iters
    print(f"| {m} | {1e3 * a:.3f} | {1e3 * b:.3f} | {a / b:.2f}× |")


def step_costs(pairs, x, args) -> None:
  """Part 2: the verifier's one-token step and v(k) per setting."""
  print(f"\n2. The verifier at batch {x.shape[0]}, compiled call loops, medians of "
        f"{args.reps} rounds\n")
  side_by_side.verifier_calls(pairs, Setting, x, (1, 2, 4), args.max_decode_length + 8, 48,
                              args.reps, args.change)


if __name__ == "__main__":
  main()
