"""Soak: many `generate` calls over random input shapes in one process stay bounded.

    python bench/soak_generate.py [--calls 1000] [--max_len 256] [--max_batch 16]
                                  [--methods verifier,spec_decode,spec_cascade]
                                  [--max_decode_length 8] [--pair committed|random]

Each call draws a method, a batch size in 1..max_batch and an input length in 1..max_len
(real token ids, then zero padding), and decodes greedily. Printed every 100 calls and at the
end: resident memory (RSS), the compiled programs alive (`programs.PROGRAMS`) per method, and
how many calls compiled. Checks (exit 1 when one fails):
  * programs per method ≤ 16 (bucketed shapes: 3 lengths × 5 batch sizes for 1–256 × 1–16);
  * RSS grows by less than 25 % over the second half of the calls (every shape is compiled by
    then; growth after that would be a leak);
  * no warm call is slower than 3× the median of calls at its bucketed shape and method (a
    call that recompiled, or one that paid for more than its bucket, would be); a call over
    3× is run again once, and counts only if it is slow again (other work on a shared machine
    slows a few calls in a burst).
The default pair is the committed offline pair (`spec_cascade.pretrained`); --pair=random uses
randomly initialised tiny/mini models of the same shapes (no checkpoint needed).
"""
from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

RULES = {"spec_cascade": ("token_v3", 0.3), "spec_decode_lossy": ("lossy", 0.3)}


def rss_mib() -> float:
  """Current resident set size in MiB (Linux /proc; peak RSS elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_pair(kind: str):
  import jax  # pylint: disable=import-outside-toplevel
  from spec_cascade.decoding import Bundle  # pylint: disable=import-outside-toplevel
  from spec_cascade.models import T5Model, get_config  # pylint: disable=import-outside-toplevel
  if kind == "committed":
    from spec_cascade import pretrained  # pylint: disable=import-outside-toplevel
    return pretrained.load_offline_pair()[:2]
  out = []
  for i, name in enumerate(("tiny", "mini")):
    model = T5Model(get_config(name).replace(vocab_size=4224))
    out.append(Bundle(model, model.init_params(jax.random.key(i))))
  return tuple(out)


def soak(drafter, verifier, *, calls: int, max_len: int, max_batch: int,
         methods: list[str], max_decode_length: int, seed: int = 0, report_every: int = 100,
         log=lambda m: print(m, flush=True)) -> dict:
  """Runs the calls; returns {'programs': method → live programs, 'rss_mib': [...],
  'slow_calls': [...], 'compiles': int, 'bucket_ratio_max': float}."""
  from spec_cascade import programs  # pylint: disable=import-outside-toplevel
  from spec_cascade.decoding import generate  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  vocab = verifier.model.config.vocab_size
  times: dict[tuple, list[float]] = collections.defaultdict(list)
  rss, compiles, per_call = [], 0, []
  for i in range(calls):
    method = methods[int(rng.integers(len(methods)))]
    b, n = int(rng.integers(1, max_batch + 1)), int(rng.integers(1, max_len + 1))
    x = rng.integers(2, vocab, (b, n)).astype(np.int32)
    for r in range(b):
      x[r, int(rng.integers(1, n + 1)):] = 0
    rule, alpha = RULES.get(method, (None, 0.0))
    before = programs.PROGRAMS.compiled_count()
    t0 = time.perf_counter()
    generate(drafter, verifier, x, method=method, rule=rule, alpha=alpha, temperature=0.0,
             num_draft_tokens=3, max_decode_length=max_decode_length, seed=i)
    wall = time.perf_counter() - t0
    compiled = programs.PROGRAMS.compiled_count() > before
    compiles += compiled
    shape = (method, *programs.bucketed_shape(b, n))
    if not compiled:
      times[shape].append(wall)
      per_call.append((shape, wall, i, (x, method, rule, alpha)))
    if (i + 1) % report_every == 0 or i + 1 == calls:
      rss.append(rss_mib())
      log(f"[soak] {i + 1}/{calls} calls: RSS {rss[-1]:.0f} MiB, "
          f"{programs.PROGRAMS.compiled_count()} programs alive, {compiles} compilations")
  live = collections.Counter(k[3].method for k in programs.PROGRAMS.keys())
  medians = {s: statistics.median(v) for s, v in times.items()}
  ratios = [(wall / medians[s], s, i) for s, wall, i, _ in per_call]
  # A call over 3× its shape's median is run again: on a shared machine a burst of other work
  # slows a few calls; a call that needs more than its bucket (or recompiled) is slow again.
  slow = []
  for (ratio, s, i), (_, _, _, (x, method, rule, alpha)) in zip(ratios, per_call):
    if ratio <= 3.0:
      continue
    t0 = time.perf_counter()
    generate(drafter, verifier, x, method=method, rule=rule, alpha=alpha, temperature=0.0,
             num_draft_tokens=3, max_decode_length=max_decode_length, seed=i)
    again = (time.perf_counter() - t0) / medians[s]
    log(f"[soak] call {i} took {ratio:.1f}× the median at {s}; again: {again:.1f}×")
    if again > 3.0:
      slow.append((again, s, i))
  return {"programs": dict(live), "rss_mib": rss, "slow_calls": slow, "compiles": compiles,
          "bucket_ratio_max": max((r[0] for r in ratios), default=float("nan"))}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--calls", type=int, default=1000)
  ap.add_argument("--max_len", type=int, default=256)
  ap.add_argument("--max_batch", type=int, default=16)
  ap.add_argument("--methods", default="verifier,spec_decode,spec_cascade")
  ap.add_argument("--max_decode_length", type=int, default=8)
  ap.add_argument("--pair", choices=("committed", "random"), default="committed")
  args = ap.parse_args(argv)
  drafter, verifier = load_pair(args.pair)
  methods = [m for m in args.methods.split(",") if m]
  t0 = time.perf_counter()
  res = soak(drafter, verifier, calls=args.calls, max_len=args.max_len,
             max_batch=args.max_batch, methods=methods,
             max_decode_length=args.max_decode_length)
  rss = res["rss_mib"]
  half = rss[len(rss) // 2 - 1] if len(rss) > 1 else rss[0]
  growth = rss[-1] / half - 1.0
  print(f"\n{args.calls} calls in {time.perf_counter() - t0:.0f} s; compilations "
        f"{res['compiles']}; programs alive per method {res['programs']}")
  print(f"RSS {rss[0]:.0f} → {half:.0f} (half-way) → {rss[-1]:.0f} MiB: "
        f"{100 * growth:+.1f} % over the second half")
  print(f"slowest warm call / median at its bucketed shape: {res['bucket_ratio_max']:.2f}×; "
        f"{len(res['slow_calls'])} calls over 3× when run again")
  for ratio, shape, i in sorted(res["slow_calls"], reverse=True)[:5]:
    print(f"  call {i}: {ratio:.1f}× at {shape}")
  failed = []
  if any(v > 16 for v in res["programs"].values()):
    failed.append("more than 16 programs for a method")
  if growth > 0.25:
    failed.append("RSS grew by more than 25 % over the second half")
  if res["slow_calls"]:
    failed.append("warm calls slower than 3× their bucketed shape's median")
  print("PASS" if not failed else "FAIL: " + "; ".join(failed))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
