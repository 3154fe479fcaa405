"""Where a compiled decode loop spends its time: a jax.profiler trace, aggregated per op.

    python bench/profile_decode.py [--method spec_decode] [--batch 32] [--gamma 5] [--top 25]

Runs decoding (greedy unless --temperature > 0) of the synthetic pair (bench/hf_peer.py `synthetic_pair`, real
`tiny`/`mini` sizes) once to compile, then once under `jax.profiler.trace` with a perfetto
trace, and prints the ops (XLA thunks / fusions) that took the most wall time, summed over
the run, with their share of the traced decode. The raw trace stays in --trace_dir for
ui.perfetto.dev (open the *.trace.json.gz file).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (adds the repo root)

from spec_cascade.decoding import generate  # pylint: disable=g-import-not-at-top


def op_totals(trace_file: str) -> tuple[collections.Counter, collections.Counter]:
  """Total duration (µs) and count per event name, over complete ('X') events."""
  with gzip.open(trace_file, "rt") as f:
    events = json.load(f)["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      # Fusion/thunk names carry numeric suffixes (fusion.123); group them by kind+number
      # as XLA names them, so each op of the program stays one row.
      total[e["name"]] += float(e["dur"])
      count[e["name"]] += 1
  return total, count


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--method", default="spec_decode")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace_dir", default=None)
  args = parser.parse_args()

  drafter, verifier = hf_peer.synthetic_pair()
  inputs = hf_peer.random_inputs(args.batch, 64, drafter.model.config.vocab_size, seed=1)
  run = lambda: generate(drafter, verifier, inputs, method=args.method,
                         num_draft_tokens=args.gamma, max_decode_length=args.max_decode_length,
                         temperature=args.temperature)
  run()
  start = time.perf_counter()
  res = run()
  wall = time.perf_counter() - start
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="spec_cascade_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run()
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    sys.exit(f"no perfetto trace written under {trace_dir}")
  total, count = op_totals(max(files, key=os.path.getmtime))
  blocks = int(res.counters["blocks"].max()) if hasattr(res, "counters") else 0
  print(f"{args.method} batch {args.batch} γ {args.gamma}: untraced decode {wall * 1e3:.1f} ms"
        f"{f', {blocks} blocks' if blocks else ''}; trace: {trace_dir}")
  # The outermost events (the executable, the while loop) contain the rest; show the ops.
  skip = re.compile(r"^(PjitFunction|pjit|jit_|while|ExecuteHelper|Thunk::Execute|"
                    r"TfrtCpuExecutable|PjRt|.*Execute.*)", re.IGNORECASE)
  ops = [(n, t) for n, t in total.items() if not skip.match(n)]
  ops.sort(key=lambda x: -x[1])
  op_sum = sum(t for _, t in ops)
  print(f"{'op':60s} {'ms':>9s} {'calls':>7s} {'share':>6s}")
  for name, t in ops[:args.top]:
    print(f"{name[:60]:60s} {t / 1e3:9.2f} {count[name]:7d} {t / op_sum:6.1%}")
  print(f"{'(all ops)':60s} {op_sum / 1e3:9.2f}")


if __name__ == "__main__":
  main()
