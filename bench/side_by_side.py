"""Timing variants of one decode side by side: every (variant, setting) runs on each input in a
fresh random order, round after round, so the machine's noise hits all of them alike."""
from __future__ import annotations

from typing import Callable

import numpy as np


def timed_runs(variants, configs: dict, xs, rounds: int, run: Callable, seed: int = 0,
               warm_all: bool = False):
  """run(variant, config, x, i) → GenerateOutput of input i. Returns {(variant, name):
  (tokens of every input concatenated (first round), seconds summed over the inputs (median
  over rounds))}. Each (variant, name) runs once on xs[0] first, to compile (on every input
  with warm_all: where inputs may need programs of several shapes)."""
  keys = [(v, n) for v in variants for n in configs]
  for v, n in keys:
    for i, x in enumerate(xs if warm_all else xs[:1]):
      run(v, configs[n], x, i)
  secs = {k: np.zeros((rounds, len(xs))) for k in keys}
  toks = {k: [] for k in keys}
  rng = np.random.default_rng(seed)
  for r in range(rounds):
    for i, x in enumerate(xs):
      for j in rng.permutation(len(keys)):
        v, n = keys[j]
        out = run(v, configs[n], x, i)
        secs[(v, n)][r, i] = out.wall_s
        if r == 0:
          toks[(v, n)].append(np.asarray(out.tokens))
  return {k: (np.concatenate(toks[k]), float(np.median(secs[k], axis=0).sum())) for k in keys}


def add_arguments(parser, gammas: str) -> None:
  """The options every side-by-side bench on the committed pair takes."""
  parser.add_argument("--pair", default=None, help="pair folder (default: the committed one)")
  parser.add_argument("--task", default="debian_ende")
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--gammas", default=gammas)
  parser.add_argument("--rounds", type=int, default=2, help="timed rounds per example")


def methods(gammas: str, max_decode_length: int, drafter: bool = False) -> dict:
  """Greedy settings by name: the verifier alone (and the drafter alone), SpecDecode at each γ
  of the comma-separated `gammas`."""
  base = dict(temperature=0.0, max_decode_length=max_decode_length)
  out = {"verifier alone": dict(base, method="verifier")}
  if drafter:
    out["drafter alone"] = dict(base, method="drafter")
  for g in (int(g) for g in gammas.split(",") if g):
    out[f"SpecDecode γ {g}"] = dict(base, method="spec_decode", num_draft_tokens=g)
  return out


def before_after(res: dict, before: str, after: str, names, labels: tuple[str, str]) -> None:
  """Checks that both variants gave the same tokens (SystemExit naming the setting if not) and
  prints a table: seconds before and after, the speed-up, and each setting's speed-up over the
  verifier alone of the same variant."""
  for n in names:
    if not np.array_equal(res[(before, n)][0], res[(after, n)][0]):
      raise SystemExit(f"FAIL: {n} gives other tokens with {labels[1]} than with {labels[0]}")
  v_before, v_after = res[(before, "verifier alone")][1], res[(after, "verifier alone")][1]
  print(f"| | {labels[0]} s | {labels[1]} s | speed-up | speed-up over the verifier alone "
        f"({labels[0]} / {labels[1]}) |")
  print("|---|---:|---:|---:|---:|")
  for n in names:
    a, b = res[(before, n)][1], res[(after, n)][1]
    print(f"| {n} | {a:.3f} | {b:.3f} | {a / b:.2f}× | {v_before / a:.2f}× / {v_after / b:.2f}× |")
