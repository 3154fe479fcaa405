"""What the select write of a batch-1, one-token step buys (`layers.write_block`).

    python bench/cache_write.py [--pair DIR] [--task debian_ende] [--examples 16]
        [--gammas 1,2,3] [--rounds 2]

Every program is compiled twice in one process: with the select write
(`layers.MASKED_ONE_TOKEN_WRITE`, the default) and with the per-row dynamic_update_slice it
replaced (each mode keeps its own program cache, so neither reuses the other's trace). Then:

1. The committed pair's models, one-token calls at batch 1 in a compiled loop
   (`costs.call_loop`; the loop's set-up timed apart and subtracted): ms per call.
2. Batch 1, each validation example alone, end to end (the paper's latency regime), greedy:
   the verifier alone and SpecDecode at each γ of `--gammas`, both modes interleaved in a
   fresh random order per example, `--rounds` rounds (medians). Columns: seconds over the
   examples, the select write's speed-up, and each SpecDecode's speed-up over the verifier
   alone of the same mode.

Outputs must be the same tokens in both modes (else FAIL). Nothing else may run on the machine
meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import costs, infer, pretrained, programs  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
from spec_cascade.models import layers  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position

MODES = ("update_slice", "select")


class Mode:
  """Runs the code under one write mode, with that mode's own program cache."""

  caches = {m: programs.ProgramCache() for m in MODES}

  def __init__(self, mode: str):
    self.mode = mode

  def __enter__(self):
    self.saved = (layers.MASKED_ONE_TOKEN_WRITE, programs.PROGRAMS)
    layers.MASKED_ONE_TOKEN_WRITE = self.mode == "select"
    programs.PROGRAMS = self.caches[self.mode]

  def __exit__(self, *exc):
    layers.MASKED_ONE_TOKEN_WRITE, programs.PROGRAMS = self.saved


def call_costs(drafter, verifier, x, cache_length: int, iters: int, reps: int):
  """{(model, mode): ms per one-token call}."""
  fns = {}
  for mode in MODES:
    with Mode(mode):
      for name, bundle in (("drafter", drafter), ("verifier", verifier)):
        fns[(name, mode, iters)] = costs.call_loop(bundle, x, 1, cache_length, iters)
        fns[(name, mode, 0)] = costs.call_loop(bundle, x, 1, cache_length, 0)
  _, secs = costs.interleaved(fns, reps, order_seed=0)
  return {(n, m): 1e3 * costs.per_call_seconds(secs[(n, m, iters)], secs[(n, m, 0)], iters)
          for n in ("drafter", "verifier") for m in MODES}


def run_in_mode(drafter, verifier):
  """side_by_side's run: decode one example under a write mode."""
  def run(mode, config, x, i):
    with Mode(mode):
      return generate(drafter, verifier, x, example_ids=np.array([i]), **config)
  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  side_by_side.add_arguments(parser, gammas="1,2,3")
  parser.add_argument("--reps", type=int, default=20, help="rounds of part 1's call loops")
  args = parser.parse_args(argv)
  drafter, verifier, _ = pretrained.load_offline_pair(args.pair)
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, 0, vocab, args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  print(f"drafter {drafter.model.num_params() / 1e6:.2f}M, verifier "
        f"{verifier.model.num_params() / 1e6:.2f}M; {args.task}, {len(xs)} validation examples, "
        f"inputs {args.input_length}, ≤ {args.max_decode_length} new tokens, greedy; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

  per_call = call_costs(drafter, verifier, xs[0], args.max_decode_length + 8, 48, args.reps)
  print("\n1. one-token calls at batch 1, compiled loop, ms per call\n")
  print("| model | dynamic_update_slice | select | speed-up |")
  print("|---|---:|---:|---:|")
  for n in ("drafter", "verifier"):
    a, b = per_call[(n, "update_slice")], per_call[(n, "select")]
    print(f"| {n} | {a:.3f} | {b:.3f} | {costs.ratio(a, b):.2f}× |")

  configs = side_by_side.methods(args.gammas, args.max_decode_length)
  res = side_by_side.timed_runs(MODES, configs, xs, args.rounds,
                                run_in_mode(drafter, verifier))
  print(f"\n2. batch 1, {len(xs)} examples one at a time, end to end, medians of "
        f"{args.rounds} rounds\n")
  side_by_side.before_after(res, "update_slice", "select", configs,
                            ("dynamic_update_slice", "select"))

if __name__ == "__main__":
  main()
