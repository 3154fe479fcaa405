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
