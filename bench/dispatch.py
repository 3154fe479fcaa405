"""What a `generate` call costs beyond its compiled decode at batch 1: input checks, bucket
padding, the program lookup, moving inputs in and tokens and counters out.

    python bench/dispatch.py [--task debian_ende] [--examples 16] [--rounds 3]

On the committed offline pair and real validation inputs (the main job's lengths), each
example is decoded alone by each method; per call, the whole `generate` call is timed around it
and `GenerateOutput.wall_s` (the compiled call alone, what every speed-up in this project is
computed from) is read from it. Prints the median of both and their difference (the Python
dispatch) in ms and as a share of the call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spec_cascade import infer, pretrained  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402

CONFIGS = {
    "verifier": dict(method="verifier"),
    "drafter": dict(method="drafter"),
    "spec_decode γ3": dict(method="spec_decode", num_draft_tokens=3),
    "spec_cascade token_v3 γ3": dict(method="spec_cascade", rule="token_v3", alpha=0.5,
                                     num_draft_tokens=3),
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", default="debian_ende")
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--input_length", type=int, default=128)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  drafter, verifier, _ = pretrained.load_offline_pair()
  data = infer.load_task(args.task, "validation", args.examples, 0,
                         pretrained.offline_vocab_path(), args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  print(f"{args.task}: {len(xs)} validation examples one at a time, inputs "
        f"{args.input_length}, ≤ {args.max_decode_length} new tokens, greedy; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  kws = {k: dict(v, temperature=0.0, max_decode_length=args.max_decode_length)
         for k, v in CONFIGS.items()}
  for kw in kws.values():  # compile
    generate(drafter, verifier, xs[0], example_ids=np.array([0]), **kw)
  total = {k: [] for k in kws}
  inner = {k: [] for k in kws}
  rng = np.random.default_rng(0)
  names = list(kws)
  for _ in range(args.rounds):
    for i, x in enumerate(xs):
      for j in rng.permutation(len(names)):
        name = names[j]
        t0 = time.perf_counter()
        out = generate(drafter, verifier, x, example_ids=np.array([i]), **kws[name])
        total[name].append(time.perf_counter() - t0)
        inner[name].append(out.wall_s)
  print("| method | generate() ms | compiled call ms | dispatch ms | dispatch share |\n"
        "|---|---:|---:|---:|---:|")
  for name in names:
    t, w = np.median(total[name]), np.median(inner[name])
    d = np.median(np.subtract(total[name], inner[name]))
    print(f"| {name} | {1e3 * t:.2f} | {1e3 * w:.2f} | {1e3 * d:.2f} | {d / t:.1%} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
