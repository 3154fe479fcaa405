"""What streamed weights buy (a bfloat16 twin of each dense kernel, read by the few-row
kernel for products of 1-8 rows; `cpu_kernels.stream_params`).

    python bench/streamed_weights.py [--pair DIR] [--task debian_ende] [--examples 16]
        [--gammas 1,3] [--batches 8,32]

The pair is loaded twice in one process, with float32 weights only (`stream_weights=False`,
as before) and streamed (the default), and every setting runs on the same validation inputs
(padded to `--input_length`), greedy, ≤ `--max_decode_length` new tokens:

1. batch 1, each example alone, end to end (the paper's latency regime): the verifier alone
   and SpecDecode at each γ of `--gammas`, methods interleaved in a fresh random order per
   example, `--rounds` rounds (medians). Columns: seconds over the examples, speed-up of
   streamed over float32, and each SpecDecode's speed-up over the verifier alone of the same
   weights and over the float32 verifier alone (what a user of the earlier release saw).
2. `--batches`: the verifier alone and SpecDecode γ 1 over the same examples in consecutive
   batches (products of more than 8 rows go to XLA with the float32 copy).

Outputs must be the same tokens with both weight sets (else FAIL). Nothing else may run on
the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import infer, loading, pretrained  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
from spec_cascade.models import cpu_kernels  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position


def timed(pairs, configs, batches, rounds: int, seed: int = 0):
  """{(weights, name): (tokens, seconds summed over batches, median over rounds)}."""
  return side_by_side.timed_runs(list(pairs), configs, batches, rounds,
                                 lambda w, config, x, i: generate(*pairs[w], x, **config), seed)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  side_by_side.add_arguments(parser, gammas="1,3")
  parser.add_argument("--batches", default="8,32")
  args = parser.parse_args(argv)
  if not cpu_kernels.streaming_enabled():
    raise SystemExit("Streaming is off here (no few-row kernel, or "
                     f"{cpu_kernels.ENV_STREAM}=0): nothing to compare.")
  root = pretrained.check_offline_pair(args.pair)
  paths = (pretrained.offline_drafter_path(args.pair), pretrained.offline_verifier_path(args.pair))
  pairs = {w: tuple(loading.load_bundle(p, stream_weights=w == "streamed") for p in paths)
           for w in ("float32", "streamed")}
  twins = {name: sum(isinstance(x, cpu_kernels.StreamedKernel) for x in jax.tree_util.tree_leaves(
      b.params, is_leaf=lambda x: isinstance(x, cpu_kernels.StreamedKernel)))
           for name, b in zip(("drafter", "verifier"), pairs["streamed"])}
  vocab = pretrained.offline_vocab_path(args.pair)
  sizes = [int(b) for b in args.batches.split(",") if b]
  data = infer.load_task(args.task, "validation", max([args.examples] + sizes), 0, vocab,
                         args.input_length)
  every = [x for x, _ in infer.one_at_a_time(data)]
  xs = every[:args.examples]
  print(f"{root}: streamed kernels — drafter {twins['drafter']}, verifier {twins['verifier']}; "
        f"{args.task}, {len(xs)} validation examples, inputs {args.input_length}, ≤ "
        f"{args.max_decode_length} new tokens, greedy; kernel threads {cpu_kernels.threads()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  configs = side_by_side.methods(args.gammas, args.max_decode_length)
  res = timed(pairs, configs, xs, args.rounds)
  for n in configs:
    if not np.array_equal(res[("float32", n)][0], res[("streamed", n)][0]):
      raise SystemExit(f"FAIL: {n} gives other tokens with streamed weights")
  v32, vst = res[("float32", "verifier alone")][1], res[("streamed", "verifier alone")][1]
  print(f"\n1. batch 1, {len(xs)} examples one at a time, medians of {args.rounds} rounds\n")
  print("| | float32 s | streamed s | streamed speed-up | speed-up over the verifier "
        "(float32 / streamed) | streamed over the float32 verifier |")
  print("|---|---:|---:|---:|---:|---:|")
  for n in configs:
    a, b = res[("float32", n)][1], res[("streamed", n)][1]
    print(f"| {n} | {a:.3f} | {b:.3f} | {a / b:.2f}× | {v32 / a:.2f}× / {vst / b:.2f}× | "
          f"{v32 / b:.2f}× |")
  if sizes:
    print("\n2. batches (consecutive examples), seconds over all batches\n")
    print("| batch | method | float32 s | streamed s | streamed speed-up |")
    print("|---:|---|---:|---:|---:|")
  for size in sizes:
    bs = [np.concatenate(every[i:i + size]) for i in range(0, len(every) // size * size, size)]
    cfg = side_by_side.methods("1", args.max_decode_length)
    r = timed(pairs, cfg, bs, args.rounds)
    for n in cfg:
      if not np.array_equal(r[("float32", n)][0], r[("streamed", n)][0]):
        raise SystemExit(f"FAIL: {n} at batch {size} gives other tokens with streamed weights")
      a, b = r[("float32", n)][1], r[("streamed", n)][1]
      print(f"| {size} | {n} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")


if __name__ == "__main__":
  main()
