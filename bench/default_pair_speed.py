"""Speed a user can see: a drafter/verifier pair on real validation inputs, in the paper's
latency regime (batch 1, one example per call, end to end: encoders included).

    python bench/default_pair_speed.py [--pair DIR | --drafter D --verifier V]
        [--tasks debian_ende,debian_summarize] [--examples 24] [--max_decode_length 48]
        [--grow_verifier 16x2560x8+24] [--matmul_dtype bfloat16]

For each task, on the same `--examples` random validation examples (inputs padded to
`--input_length` tokens), each decoded alone:

1. greedy: the verifier alone, SpecDecode at every γ of `--gammas`, at γ = 'auto' (choosing
   among `--gammas` after a warm-up on the first 16 examples, `settle_auto`) and at the
   largest γ with each dynamic draft length θ of `--confidences` (draft_confidence). Columns:
   latency relative to the verifier (end to end, summed over examples), speed-up, the per-draft
   acceptance rate a, the paper's per-row bound E[tokens per block] / (γ·c + v(γ+1)) from the
   measured a, c and v (c: drafter step / verifier step, v(k): verifier call scoring k tokens /
   a one-token step, both timed in compiled loops at batch 1), and efficiency = speed-up /
   bound. Greedy SpecDecode must reproduce the verifier's tokens (else FAIL).
2. T ∈ {0, 1}: quality (BLEU or ROUGE-2 on these examples, with a bootstrap 90 % interval)
   and relative latency of the verifier, the drafter, SpecDecode and SpecCascade [Token]
   (token_v3) at each α of `--alphas`; the SpecCascade point with the lowest latency whose
   quality reaches the verifier's, against SpecDecode's latency.
3. `--batches` (default 8, 32): greedy SpecDecode with 'auto' against the verifier alone over
   the same examples in consecutive batches (outputs must agree).

--grow_verifier runs all of it with the verifier grown function-preservingly to a larger size
(bench/verifier_scale.py): the same tokens and quality, the costs of a verifier whose step
streams its weights from memory.

All timings in one process, methods interleaved per example, so load changes hit all alike.
Timings are not numbers while anything else runs on the machine (a training run, tests).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spec_cascade import autogamma, costs, infer, pretrained  # noqa: E402
from spec_cascade.decoding import Bundle, generate  # noqa: E402


def settle_auto(drafter, verifier, batches, ids, kw, name: str) -> None:
  """Runs 'auto' over the batches until its γ is settled (as a user's first calls would), so
  the timed rounds measure the choice it keeps; prints what the warm-up cost."""
  spent, used, out = 0.0, 0, None
  for x, i in zip(batches, ids):
    out = generate(drafter, verifier, x, example_ids=i, **kw)
    spent += out.wall_s + out.warmup_s
    used += 1
    if out.gamma_choice.settled:
      break
  ch = out.gamma_choice
  secs = ", ".join(f"{g}: {1e3 * t:.0f} ms" for g, t in sorted(ch.seconds.items()))
  print(f"  'auto' ({name}): {'settled' if ch.settled else 'still provisional'} on γ "
        f"{ch.gamma} after {ch.rows} rows in {used} calls, {spent:.1f} s of warm-up "
        f"(per batch: {secs})")


def measure_costs(drafter, verifier, x, gammas, length: int, reps: int = 30):
  """→ (costs.measure_cost_ratio's dict: c, drafter_call_s, verifier_call_s, plus
  verifier_setup_s / drafter_setup_s: each model's set-up (encoder, cross-attention keys and
  values, cache) alone; {γ: v(γ+1)}, the verify call scoring γ + 1 tokens over a one-token
  step), timed in compiled loops at x's batch. Long loops and many rounds: a call costs 0.1-3
  ms, and the set-up is subtracted."""
  c = costs.measure_cost_ratio(drafter, verifier, x, length, reps=reps, iters=48)
  loops = {"v1": costs.call_loop(verifier, x, 1, length, 48)}
  for g in gammas:
    loops[g] = costs.call_loop(verifier, x, g + 1, length, 48)
  loops["setup"] = costs.call_loop(verifier, x, 1, length, 0)
  loops["drafter_setup"] = costs.call_loop(drafter, x, 1, length, 0)
  _, t = costs.interleaved(loops, reps)
  c = dict(c, verifier_setup_s=t["setup"], drafter_setup_s=t["drafter_setup"])
  step = costs.per_call_seconds(t["v1"], t["setup"], 48)
  # A step within timing noise of the set-up (tiny models on a busy machine) gives no ratio.
  verify_cost = {g: (costs.per_call_seconds(t[g], t["setup"], 48) / step if step > 0
                     else math.nan) for g in gammas}
  return c, verify_cost


def run_per_example(drafter, verifier, xs, configs, rounds: int):
  """Decodes each example alone with every config; returns {name: (tokens [N, L], counters
  summed, seconds summed over examples (median over rounds per example))}."""
  outs = {name: [] for name in configs}
  secs = {name: np.zeros((rounds, len(xs))) for name in configs}
  for name, kw in configs.items():  # compile first
    if kw.get("num_draft_tokens") == "auto":
      settle_auto(drafter, verifier, xs, [np.array([i]) for i in range(len(xs))], kw, name)
    else:
      generate(drafter, verifier, xs[0], example_ids=np.array([0]), **kw)
  rng = np.random.default_rng(0)
  names = list(configs)
  for r in range(rounds):
    for i, x in enumerate(xs):
      # A fresh order per example: whichever method runs after another finds the caches
      # holding the other's weights, a bias of several percent when the order is fixed.
      for name in rng.permutation(names):
        kw = configs[name]
        out = generate(drafter, verifier, x, example_ids=np.array([i]), **kw)
        secs[name][r, i] = out.wall_s
        if r == 0:
          outs[name].append(out)
  result = {}
  for name, lst in outs.items():
    tokens = np.concatenate([o.tokens for o in lst])
    counters = {k: float(sum(o.counters[k].sum() for o in lst)) for k in lst[0].counters}
    gammas = sorted({o.num_draft_tokens for o in lst if o.num_draft_tokens is not None})
    result[name] = (tokens, counters, float(np.median(secs[name], axis=0).sum()), gammas)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pair", default=None, help="pair folder (default: the committed one)")
  parser.add_argument("--drafter", default=None)
  parser.add_argument("--verifier", default=None)
  parser.add_argument("--tasks", default="debian_ende,debian_summarize")
  parser.add_argument("--examples", type=int, default=24)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--gammas", default="1,2,3,5")
  parser.add_argument("--confidences", default="0.4,0.6",
                      help="draft_confidence θ values for SpecDecode at the largest γ "
                           "(dynamic draft length); '' for none")
  parser.add_argument("--alphas", default="0.3,0.5,0.7")
  parser.add_argument("--temperatures", default="0,1")
  parser.add_argument("--batches", default="8,32")
  parser.add_argument("--rounds", type=int, default=2, help="timed rounds per example")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--grow_verifier", default=None, metavar="HEADSxMLPxENC+DEC",
                      help="replace the verifier by itself grown function-preservingly to "
                           "this size (bench/verifier_scale.py): its tokens and quality, a "
                           "larger verifier's costs")
  parser.add_argument("--matmul_dtype", default=None,
                      help="bfloat16: the dense layers take bfloat16 inputs "
                           "(T5Config.matmul_dtype; products of few rows on the paired "
                           "kernel where the CPU has AVX512-BF16)")
  args = parser.parse_args(argv)
  gammas = [int(g) for g in args.gammas.split(",") if g]
  confidences = [float(t) for t in args.confidences.split(",") if t]
  alphas = [float(a) for a in args.alphas.split(",") if a]
  temps = [float(t) for t in args.temperatures.split(",") if t]
  batches = [int(b) for b in args.batches.split(",") if b]

  if args.drafter or args.verifier:
    drafter = Bundle(*infer.load_bundle(args.drafter, matmul_dtype=args.matmul_dtype))
    verifier = Bundle(*infer.load_bundle(args.verifier, matmul_dtype=args.matmul_dtype))
    vocab = infer.checkpoint_vocabulary(args.verifier)
  else:
    drafter, verifier, _ = pretrained.load_offline_pair(args.pair, matmul_dtype=args.matmul_dtype)
    vocab = pretrained.offline_vocab_path(args.pair)
  if args.grow_verifier:
    import verifier_scale  # pylint: disable=import-outside-toplevel  (imports this module)
    verifier = verifier_scale.grown_offline_verifier(args.grow_verifier, args.pair,
                                                     args.matmul_dtype, args.verifier)
    print(f"verifier grown to {args.grow_verifier} (function-preserving: the committed "
          "verifier's tokens and quality at a larger verifier's costs)")
  print(f"drafter {drafter.model.num_params() / 1e6:.2f}M, verifier "
        f"{verifier.model.num_params() / 1e6:.2f}M parameters; {args.examples} validation "
        f"examples per task, inputs padded to {args.input_length}, ≤ {args.max_decode_length} "
        f"new tokens; batch 1, end to end; matmul inputs {args.matmul_dtype or 'float32'}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  # 'auto' chooses among the γ this run compares (and, for SpecDecode, the verifier alone).
  auto = dict(num_draft_tokens="auto", draft_candidates=tuple(gammas))
  summary = []
  for task in args.tasks.split(","):
    autogamma.clear_cache()  # 'auto' chooses for this task's inputs, not the previous task's
    data = infer.load_task(task, "validation", args.examples, args.seed, vocab,
                           args.input_length)
    metric = infer.metric_name(task)
    xs = [x for x, _ in infer.one_at_a_time(data)]
    c, verify_cost = measure_costs(drafter, verifier, xs[0], gammas,
                                   args.max_decode_length + 8)
    v1 = c["verifier_call_s"]
    print(f"\n## {task} ({metric}); c = {c['c']:.3f} (drafter {1e3 * c['drafter_call_s']:.3f} "
          f"ms, verifier {1e3 * v1:.3f} ms per step); v(γ+1) = "
          + ", ".join(f"{verify_cost[g]:.2f} (γ {g})" for g in gammas))

    # 1. Greedy SpecDecode against the verifier.
    base = dict(temperature=0.0, max_decode_length=args.max_decode_length)
    configs = {"verifier": dict(base, method="verifier")}
    for g in gammas:
      configs[f"γ={g}"] = dict(base, method="spec_decode", num_draft_tokens=g)
    configs["γ=auto"] = dict(base, method="spec_decode", **auto)
    for theta in confidences:
      configs[f"γ={max(gammas)} θ={theta:g}"] = dict(
          base, method="spec_decode", num_draft_tokens=max(gammas), draft_confidence=theta)
    res = run_per_example(drafter, verifier, xs, configs, args.rounds)
    v_tokens, _, v_s, _ = res["verifier"]
    print(f"\n| greedy, batch 1 | rel. latency | speed-up | acceptance | bound | efficiency |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| verifier alone ({v_s:.2f} s) | 1.00 | 1.00 | | | |")
    for name, (tok, cnt, s, gs) in res.items():
      if name == "verifier":
        continue
      if not np.array_equal(tok, v_tokens):
        raise SystemExit(f"FAIL: greedy SpecDecode {name} differs from the verifier on {task}")
      a = autogamma.acceptance_estimate(cnt)
      g = gs[0] if len(gs) == 1 and "θ" not in name else None  # θ: blocks of 1..γ
      label = name + (f" (chose {gs})" if name == "γ=auto" else "")
      if g:
        bound = autogamma.predicted_speedup(a, g, c["c"], verify_cost.get(g, 1.0))
        print(f"| SpecDecode {label} | {s / v_s:.3f} | {v_s / s:.2f} | {a:.3f} | "
              f"{bound:.2f} | {v_s / s / bound:.2f} |")
      else:
        print(f"| SpecDecode {label} | {s / v_s:.3f} | {v_s / s:.2f} | {a:.3f} | | |")
      summary.append((task, f"greedy SpecDecode {name}", v_s / s))

    # 2. Quality and latency at T = 0 and T = 1.
    targets = [ex.targets for ex in data.examples]
    for temp in temps:
      base = dict(temperature=temp, max_decode_length=args.max_decode_length, seed=args.seed)
      configs = {"verifier": dict(base, method="verifier"),
                 "drafter": dict(base, method="drafter"),
                 "SpecDecode γ=auto": dict(base, method="spec_decode", **auto)}
      for a in alphas:
        configs[f"SpecCascade [Token] α={a}"] = dict(
            base, method="spec_cascade", rule="token_v3", alpha=a, **auto)
      res = run_per_example(drafter, verifier, xs, configs, args.rounds)
      v_s = res["verifier"][2]
      print(f"\n| T = {temp:g}, batch 1 | {metric} (90 % CI) | rel. latency | γ |")
      print("|---|---:|---:|---:|")
      quality = {}
      for name, (tok, cnt, s, gs) in res.items():
        preds = [data.tokenizer.decode(row) for row in tok]
        q = infer.score(targets, preds, metric)[metric]
        lo, hi = infer.bootstrap_interval(targets, preds, metric)
        quality[name] = (q, s / v_s)
        print(f"| {name} | {q:.2f} ({lo:.1f}–{hi:.1f}) | {s / v_s:.3f} | "
              f"{','.join(map(str, gs)) or '–'} |")
      vq = quality["verifier"][0]
      reach = [(lat, n) for n, (q, lat) in quality.items()
               if n.startswith("SpecCascade") and q >= vq]
      spec_lat = quality["SpecDecode γ=auto"][1]
      if reach:
        lat, name = min(reach)
        print(f"\nverifier quality reached by {name} at {lat:.3f}× the verifier's latency "
              f"(SpecDecode: {spec_lat:.3f}×)")
        summary.append((task, f"T={temp:g} best SpecCascade at verifier quality", 1 / lat))
      else:
        print(f"\nno SpecCascade point reached the verifier's {metric} ({vq:.2f}) on these "
              "examples")

    # 3. Throughput batches with 'auto': never slower than the verifier.
    for b in batches:
      n = (len(xs) // b) * b or b
      rows = [xs[i % len(xs)][0] for i in range(n)]
      chunks = [np.stack(rows[i:i + b]) for i in range(0, n, b)]
      ids = [np.arange(i, i + b) for i in range(0, n, b)]
      base = dict(temperature=0.0, max_decode_length=args.max_decode_length)
      runs = {"verifier": dict(base, method="verifier"),
              "auto": dict(base, method="spec_decode", **auto)}
      generate(drafter, verifier, chunks[0], example_ids=ids[0], **runs["verifier"])
      settle_auto(drafter, verifier, chunks, ids, runs["auto"], f"batch {b}")
      t = {k: [] for k in runs}
      chosen = set()
      order = np.random.default_rng(1)
      for r in range(args.rounds):
        for chunk, i in zip(chunks, ids):
          outs = {}
          for k in order.permutation(list(runs)):
            outs[k] = generate(drafter, verifier, chunk, example_ids=i, **runs[k])
            t[k].append(outs[k].wall_s)
          chosen.add(outs["auto"].num_draft_tokens)
          if not np.array_equal(outs["auto"].tokens, outs["verifier"].tokens):
            raise SystemExit(f"FAIL: 'auto' SpecDecode differs from the verifier at batch {b}")
      ratio = sum(t["verifier"]) / sum(t["auto"])
      print(f"\nbatch {b}: greedy SpecDecode 'auto' (chose γ {sorted(chosen)}; 0 = the "
            f"verifier alone) is {ratio:.2f}× the verifier ({n} examples)")
      summary.append((task, f"batch {b} SpecDecode auto", ratio))
  print("\n## summary (speed-up over the verifier alone)")
  for task, what, value in summary:
    print(f"{task:18s} {what:45s} {value:.2f}×")
  return summary


if __name__ == "__main__":
  main()
