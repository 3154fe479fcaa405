"""First-call compile time per decoding method, and an α sweep that must compile nothing.

    python bench/compile_time.py [--methods all] [--input_len 128] [--max_decode_length 64]
                                 [--batch 8] [--gamma 5] [--limit_s 20]

The offline default pair's sizes: drafter `tiny` (d128, 2+2), verifier `mini` (d256, 4+4),
vocab 4224 (random weights: compile time does not depend on values). Each method runs in a
fresh subprocess (no in-process or persistent compilation cache), and
compile ≈ first-call wall − median warm-call wall, so the first call's decoding itself is not
counted (also reported as process CPU time, which a shared machine inflates less). Then, in one process, a `spec_cascade` α sweep (plus temperature changes) checks the
jitted program's cache holds one executable. Exits non-zero if a method exceeds --limit_s or
the sweep recompiles.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# method → (rule, extra generate kwargs)
CASES = {
    "drafter": (None, {}),
    "verifier": (None, {}),
    "spec_decode": (None, {}),
    "spec_decode_lossy": (None, {"alpha": 0.3}),
    "spec_cascade": ("token_v3", {"alpha": 0.3}),
    # The sweep's shared program: every SpecCascade rule of the paper's table in one program.
    "spec_cascade[rule_set]": ("token_v3", {"alpha": 0.3, "method": "spec_cascade",
                                            "rule_set": ("bild_star", "chow", "diff", "opt",
                                                         "token_v1", "token_v2", "token_v3")}),
    "token_cascade": (None, {"alpha": 0.3}),
    "oracle": (None, {"alpha": 0.3}),
    "seq_cascade": (None, {"alpha": 0.3}),
    "bild": (None, {}),
}


def _pair(vocab: int = 4224):
  import jax  # pylint: disable=g-import-not-at-top
  from spec_cascade.decoding import Bundle  # pylint: disable=g-import-not-at-top
  from spec_cascade.models import T5Model, get_config  # pylint: disable=g-import-not-at-top
  out = []
  for i, name in enumerate(("tiny", "mini")):
    model = T5Model(get_config(name).replace(vocab_size=vocab))
    out.append(Bundle(model, model.init_params(jax.random.key(i))))
  return out


def _inputs(batch: int, length: int, vocab: int = 4224):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  for r in range(batch):
    x[r, rng.integers(length // 2, length + 1):] = 0
  return x


def measure_one(method: str, batch: int, input_len: int, max_len: int, gamma: int,
                warm_calls: int = 2) -> dict:
  """In this process: first-call and warm-call wall of one method (greedy)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from spec_cascade.decoding import generate  # pylint: disable=g-import-not-at-top
  drafter, verifier = _pair()
  x = _inputs(batch, input_len)
  rule, extra = CASES[method]
  kw = dict(method=method, rule=rule, temperature=0.0, num_draft_tokens=gamma,
            max_decode_length=max_len)
  kw.update(extra)
  t0, c0 = time.perf_counter(), time.process_time()
  generate(drafter, verifier, x, **kw)
  first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
  warm, warm_cpu = [], []
  for _ in range(warm_calls):
    t0, c0 = time.perf_counter(), time.process_time()
    generate(drafter, verifier, x, **kw)
    warm.append(time.perf_counter() - t0)
    warm_cpu.append(time.process_time() - c0)
  w, wc = float(np.median(warm)), float(np.median(warm_cpu))
  return {"method": method, "first_s": first, "warm_s": w, "compile_s": first - w,
          "compile_cpu_s": first_cpu - wc}


def alpha_sweep_compiles(batch: int, input_len: int, max_len: int, gamma: int) -> dict:
  """Executables compiled for a spec_cascade α sweep with temperature changes (want 1)."""
  from spec_cascade import decoding  # pylint: disable=g-import-not-at-top
  drafter, verifier = _pair()
  x = _inputs(batch, input_len)
  kw = dict(method="spec_cascade", rule="token_v3", num_draft_tokens=gamma,
            max_decode_length=max_len)
  from spec_cascade import programs  # pylint: disable=g-import-not-at-top
  points = [(a, t) for t in (0.0, 1.0) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
  t0 = time.perf_counter()
  for alpha, temp in points:
    decoding.generate(drafter, verifier, x, alpha=alpha, temperature=temp, **kw)
  # Executables compiled by every program the engine made: an α / T sweep must leave one.
  return {"points": len(points), "sweep_s": time.perf_counter() - t0,
          "executables": programs.PROGRAMS.compiled_count()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--methods", default="all")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_len", type=int, default=128)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--limit_s", type=float, default=20.0)
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  shape = (args.batch, args.input_len, args.max_decode_length, args.gamma)
  if args._child:  # pylint: disable=protected-access
    res = (alpha_sweep_compiles(*shape) if args._child == "@sweep"  # pylint: disable=protected-access
           else measure_one(args._child, *shape))  # pylint: disable=protected-access
    print("RESULT " + json.dumps(res))
    return res
  import jax  # pylint: disable=g-import-not-at-top
  methods = list(CASES) if args.methods == "all" else args.methods.split(",")
  print(f"# jax {jax.__version__}; drafter tiny (d128 2+2), verifier mini (d256 4+4), vocab "
        f"4224; batch {args.batch}, inputs {args.input_len}, max_decode_length "
        f"{args.max_decode_length}, γ {args.gamma}; fresh process per method")
  print("| method | first call s | warm call s | compile s (wall) | compile CPU s |\n"
        "|---|---|---|---|---|")
  results, failed = [], []
  base = [sys.executable, os.path.abspath(__file__), "--batch", str(args.batch),
          "--input_len", str(args.input_len), "--max_decode_length",
          str(args.max_decode_length), "--gamma", str(args.gamma)]
  for m in methods + ["@sweep"]:
    proc = subprocess.run(base + ["--_child", m], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
      raise SystemExit(f"FAIL: {m} crashed:\n{proc.stderr[-2000:]}")
    res = json.loads(line[0][len("RESULT "):])
    results.append(res)
    if m == "@sweep":
      print(f"\nα sweep (spec_cascade token_v3, {res['points']} (α, T) points, T ∈ {{0, 1}}): "
            f"{res['executables']} executable(s) compiled, {res['sweep_s']:.1f} s in all")
      if res["executables"] != 1:
        failed.append("α sweep recompiled")
    else:
      print(f"| {m} | {res['first_s']:.1f} | {res['warm_s']:.2f} | {res['compile_s']:.1f} | "
            f"{res['compile_cpu_s']:.1f} |", flush=True)
      if res["compile_s"] > args.limit_s:
        failed.append(f"{m} compiled in {res['compile_s']:.1f} s > {args.limit_s} s")
  if failed:
    raise SystemExit("FAIL: " + "; ".join(failed))
  return results


if __name__ == "__main__":
  main()
