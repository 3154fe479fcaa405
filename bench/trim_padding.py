"""What dropping all-padding columns buys at batch 1 (`programs.trim_padding` in `generate`).

    python bench/trim_padding.py [--pair DIR] [--task debian_ende] [--examples 16]
        [--input_length 256] [--gammas 1]

Each validation example is passed alone as a [1, --input_length] array (the main job's inputs
are padded to 256 columns), greedy, ≤ `--max_decode_length` new tokens, and decoded twice in
one process, interleaved: as `generate` does now (trailing padding columns dropped, then the
length bucketed: 64 for an input of ≤ 64 tokens) and at the width passed
(`trim_padding=False`, what every call cost before). Methods: the verifier alone, the drafter
alone and SpecDecode at each γ of `--gammas`. Prints seconds over the examples, the speed-up,
and each method's speed-up over the verifier alone at both widths. Outputs must be the same tokens
(else FAIL). Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import infer, pretrained, programs  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position

WIDTHS = ("as passed", "trimmed")


def run_at_width(drafter, verifier):
  """side_by_side's run: one example, trimmed or at the width passed."""
  def run(width, config, x, i):
    return generate(drafter, verifier, x, example_ids=np.array([i]),
                    trim_padding=width == "trimmed", **config)
  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  side_by_side.add_arguments(parser, gammas="1")
  parser.set_defaults(input_length=256)
  args = parser.parse_args(argv)
  drafter, verifier, _ = pretrained.load_offline_pair(args.pair)
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, 0, vocab, args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  used = [programs.trim_padding(x).shape[1] for x in xs]
  print(f"{args.task}: {len(xs)} validation examples of {min(used)}-{max(used)} tokens (median "
        f"{int(np.median(used))}) passed as [1, {args.input_length}]; ≤ {args.max_decode_length} "
        f"new tokens, greedy; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  configs = side_by_side.methods(args.gammas, args.max_decode_length, drafter=True)
  res = side_by_side.timed_runs(WIDTHS, configs, xs, args.rounds, run_at_width(drafter, verifier),
                                warm_all=True)  # trimmed inputs fall in several length buckets
  print(f"\nbatch 1, medians of {args.rounds} rounds\n")
  side_by_side.before_after(res, "as passed", "trimmed", configs,
                            (f"[1, {args.input_length}]", "trimmed"))

if __name__ == "__main__":
  main()
