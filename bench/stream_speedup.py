"""Continuous batching vs consecutive batches, on one device or a data-parallel mesh.

    python bench/stream_speedup.py [--examples 128] [--rows 8,32] [--trials 5]
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/stream_speedup.py
    python bench/stream_speedup.py --seq_alpha 0.9   # also the sequence-level cascade

N examples of the synthetic pair (bench/hf_peer.py `synthetic_pair`: tiny-shaped drafter,
mini-shaped verifier), greedy, decoded by our verifier alone and by SpecDecode, each in two
ways: one `generate` call per batch of `rows` examples (a batch's loop runs until its slowest
row is done), and one `generate(slots=rows)` call over all N (continuous batching: a finished
row's slot takes the next example in the same step). With several JAX devices both run on a
data-parallel mesh, where every device runs its own loop over its share (`decoding._jit`).
Tokens must agree between the two ways (greedy: the same examples, the same outputs), else
the script exits non-zero. Prints median decode wall-clock seconds over interleaved trials
and the ratios; all numbers come from one process, so compare ratios, not runs.

--seq_alpha α also times the sequence-level cascade (seq_cascade, Chow at α) both ways:
streamed, the drafter goes through every example and then the verifier through the deferred
ones only, where consecutive batches run the verifier over every batch holding one.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (adds the repo root)

from spec_cascade import parallel  # pylint: disable=g-import-not-at-top


def run(drafter, verifier, inputs: np.ndarray, rows: int, trials: int, mesh=None,
        max_decode_length: int = 64, gamma: int = 5,
        seq_alpha: float | None = None) -> dict[str, float]:
  """Median seconds of {verifier, spec[, seq]} × {batches, stream} on `inputs` [N, S]; with
  seq_alpha, also 'seq deferred': the share of examples seq_cascade deferred."""
  extra = None if seq_alpha is None else {"seq": dict(method="seq_cascade", alpha=seq_alpha)}
  fns = hf_peer.stream_calls(drafter, verifier, inputs, rows, gamma, extra, temperature=0.0,
                             max_decode_length=max_decode_length, mesh=mesh)
  out = {k: f() for k, f in fns.items()}  # warm-up (compiles) and the outputs to compare
  tokens = {k: np.concatenate([o.tokens for o in v]) for k, v in out.items()}
  for k, v in tokens.items():
    like = "seq batches" if k.startswith("seq") else "verifier batches"
    if not np.array_equal(v, tokens[like]):
      sys.exit(f"{k}: tokens differ from the {like.split()[0]}'s in batches (rows {rows})")
  times = {k: [] for k in fns}
  for _ in range(trials):
    for k, f in fns.items():
      times[k].append(sum(o.wall_s for o in f()))
  res = {k: float(np.median(v)) for k, v in times.items()}
  if seq_alpha is not None:
    res["seq deferred"] = float(np.mean(out["seq stream"][0].counters["deferred"] > 0))
  return res


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=128)
  parser.add_argument("--rows", default="8,32", help="rows at a time (batch size / slots)")
  parser.add_argument("--trials", type=int, default=5)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--seq_alpha", type=float, default=None,
                      help="also time seq_cascade at this α (Chow on the sequence's confidence)")
  args = parser.parse_args(argv)
  drafter, verifier = hf_peer.synthetic_pair()
  inputs = hf_peer.random_inputs(args.examples, 64, drafter.model.config.vocab_size, seed=3)
  devices = jax.device_count()
  mesh = parallel.make_mesh() if devices > 1 else None
  print(f"jax {jax.__version__}; {devices} device(s){' (data-parallel mesh)' if mesh else ''}; "
        f"{args.examples} examples; greedy; γ {args.gamma}; max_decode_length "
        f"{args.max_decode_length}; medians of {args.trials} interleaved trials")
  print("| rows | verifier batches s | verifier stream s | spec batches s | spec stream s | "
        "verifier: batches / stream | spec: batches / stream | spec / verifier, batches | "
        "**spec / verifier, stream** |")
  print("|---|---|---|---|---|---|---|---|---|")
  seq_rows = []
  for rows in (int(r) for r in args.rows.split(",")):
    if rows % devices:
      sys.exit(f"--rows {rows} must be a multiple of the {devices} devices")
    t = run(drafter, verifier, inputs, rows, args.trials, mesh, args.max_decode_length,
            args.gamma, args.seq_alpha)
    vb, vs, sb, ss = (t["verifier batches"], t["verifier stream"], t["spec batches"],
                      t["spec stream"])
    print(f"| {rows} | {vb:.3f} | {vs:.3f} | {sb:.3f} | {ss:.3f} | {vb / vs:.2f} | "
          f"{sb / ss:.2f} | {vb / sb:.2f}× | **{vs / ss:.2f}×** |", flush=True)
    if args.seq_alpha is not None:
      seq_rows.append((rows, t))
  if seq_rows:
    print(f"\nseq_cascade at α {args.seq_alpha}:\n")
    print("| rows | deferred | seq batches s | seq stream s | **seq: batches / stream** |")
    print("|---|---|---|---|---|")
    for rows, t in seq_rows:
      print(f"| {rows} | {t['seq deferred']:.0%} | {t['seq batches']:.3f} | "
            f"{t['seq stream']:.3f} | **{t['seq batches'] / t['seq stream']:.2f}** |")


if __name__ == "__main__":
  main()
