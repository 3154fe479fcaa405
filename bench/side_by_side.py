"""Timing variants of one decode side by side: every (variant, setting) runs on each input in a
fresh random order, round after round, so the machine's noise hits all of them alike."""
from __future__ import annotations

import os
import time
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


def header(drafter, verifier, args, n: int, extra: str = "") -> None:
  """The first line of a side-by-side bench on the committed pair."""
  print(f"drafter {drafter.model.num_params() / 1e6:.2f}M, verifier "
        f"{verifier.model.num_params() / 1e6:.2f}M; {args.task}, {n} validation examples, "
        f"inputs {args.input_length}, ≤ {args.max_decode_length} new tokens, greedy; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs{extra}")


def decode_all(pairs: dict, setting_ctx: Callable, xs, args, generate: Callable,
               ids=None) -> tuple[dict, dict]:
  """(configs, `timed_runs`) of the verifier alone and SpecDecode at each γ of args.gammas
  over each input of xs (arrays [B, S]; ids: their example_ids, default [i] for input i), for
  every setting of pairs {setting: (drafter, verifier)}, each run under setting_ctx(setting)
  (a context manager: the setting's flags and program cache)."""

  def run(setting, config, x, i):
    with setting_ctx(setting):
      d, v = pairs[setting]
      return generate(d, v, x, example_ids=np.array([i]) if ids is None else ids[i], **config)

  configs = methods(args.gammas, args.max_decode_length)
  return configs, timed_runs(tuple(pairs), configs, xs, args.rounds, run,
                             warm_all=ids is not None)


def verifier_calls(pairs: dict, setting_ctx: Callable, inputs, ks, cache_length: int,
                   loops: int, reps: int, label: str) -> None:
  """Prints, per setting of pairs {setting: (drafter, verifier)}, the verifier's one-token step
  on inputs and v(k) = a call scoring k tokens / a step for each k of ks[1:] (ks[0] = 1),
  timed as compiled call loops interleaved over `reps` rounds (`costs.call_loop`)."""
  from spec_cascade import costs  # pylint: disable=g-import-not-at-top
  fns = {}
  for setting in pairs:
    with setting_ctx(setting):
      for k in ks:
        for n in (loops, 0):
          fns[(setting, k, n)] = costs.call_loop(pairs[setting][1], inputs, k, cache_length, n)
  _, secs = costs.interleaved(fns, reps, order_seed=0)
  print(f"| {label} | one-token step ms | " + " | ".join(f"v({k})" for k in ks[1:]) + " |")
  print("|---|---:|" + "---:|" * (len(ks) - 1))
  for setting in pairs:
    per = {k: costs.per_call_seconds(secs[(setting, k, loops)], secs[(setting, k, 0)], loops)
           for k in ks}
    print(f"| {setting} | {1e3 * per[1]:.3f} | "
          + " | ".join(f"{per[k] / per[1]:.2f}" for k in ks[1:]) + " |")


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


def before_after(res: dict, before: str, after: str, names, labels: tuple[str, str],
                 same_tokens: bool = True) -> None:
  """Checks that both variants gave the same tokens (SystemExit naming the setting if not;
  same_tokens=False: a change of numerics, where each variant's methods must instead give
  that variant's verifier-alone tokens, and the table says how many tokens the variants share)
  and prints a table: seconds before and after, the speed-up, and each setting's speed-up over
  the verifier alone of the same variant."""
  for n in names:
    if same_tokens and not np.array_equal(res[(before, n)][0], res[(after, n)][0]):
      raise SystemExit(f"FAIL: {n} gives other tokens with {labels[1]} than with {labels[0]}")
    for variant in (before, after):
      if not same_tokens and not np.array_equal(res[(variant, n)][0],
                                                res[(variant, "verifier alone")][0]):
        raise SystemExit(f"FAIL: {n} gives other tokens than the verifier alone with {variant}")
  if not same_tokens:
    a, b = res[(before, "verifier alone")][0], res[(after, "verifier alone")][0]
    share = np.mean(a == b) if a.shape == b.shape else float("nan")
    print(f"tokens the two variants' verifiers share (position by position): {share:.3f}\n")
  v_before, v_after = res[(before, "verifier alone")][1], res[(after, "verifier alone")][1]
  print(f"| | {labels[0]} s | {labels[1]} s | speed-up | speed-up over the verifier alone "
        f"({labels[0]} / {labels[1]}) |")
  print("|---|---:|---:|---:|---:|")
  for n in names:
    a, b = res[(before, n)][1], res[(after, n)][1]
    print(f"| {n} | {a:.3f} | {b:.3f} | {a / b:.2f}× | {v_before / a:.2f}× / {v_after / b:.2f}× |")
