"""What one SpecDecode block costs at batch 1, term by term, on a real pair.

    python bench/block_cost.py [--drafter D --verifier V] [--gamma 3] [--setup] [--matmuls]
        [--matmul_dtype bfloat16]

1. The block's model calls alone (the drafter's two-token first call and γ − 1 one-token calls,
   then the verifier scoring γ + 1 tokens), alternating in one compiled loop, against the same
   calls with each model's looped apart (one program each): the alternation cost, i.e. what
   one model's weights leaving the caches costs the other. The set-up (both encoders) is
   timed with no blocks and subtracted.
2. With --setup: what the second encoder costs. Each model's set-up (encoder and the decoder's
   cross-attention keys and values, the cache) at batch 1 for inputs of 64, 128 and 256
   tokens, against the verifier's one-token step: the share of a verifier-alone example
   (set-up plus `--tokens` steps) that the drafter's set-up adds to every two-model method,
   i.e. what a drafter reading the verifier's encoder output would save.
3. With --matmuls: why verifying γ + 1 tokens costs more than one step (v(γ+1) > 1) when the
   step streams its weights from memory: a chain of float32 [M, 256] × [256, 1024] dots over
   52 MB of weights for M = 1, 2, 4, 8 rows, as independent dots and as a dependent MLP chain,
   and the same with each weight matrix split into column blocks (which helps independent dots
   only: XLA runs the blocks concurrently on the two cores).

All variants of a table are timed interleaved in a fresh random order per round (medians), so
machine noise hits them alike. Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spec_cascade import costs, infer  # noqa: E402
from spec_cascade.decoding import Bundle, contract  # noqa: E402


def block_loop(drafter: Bundle, verifier: Bundle, inputs, gamma: int, iters: int, kind: str,
               cache_length: int):
  """A compiled loop of `iters` blocks: kind 'both' (drafter calls then the verify call),
  'drafter' or 'verifier' (that model's calls alone, the other's tokens made up)."""

  @jax.jit
  def run(dp, vp, x):
    dc = contract.start("drafter", (drafter.model, dp), x, cache_length)
    vc = contract.start("verifier", (verifier.model, vp), x, cache_length)

    def body(i, carry):
      dc, vc, tok = carry
      n = jnp.full((x.shape[0],), 1 + (gamma + 1) * i, jnp.int32)
      toks = [tok]
      if kind in ("both", "drafter"):
        # As SpecDecode's first drafter call: the previous block's last draft and x0.
        lg, dc = contract.score("drafter", (drafter.model, dp), dc,
                                jnp.stack([tok, tok], 1), n - 1)
        t = jnp.argmax(lg[:, 1], -1).astype(jnp.int32)
        toks.append(t)
        for j in range(1, gamma):
          lg, dc = contract.score("drafter", (drafter.model, dp), dc, t[:, None], n + j)
          t = jnp.argmax(lg[:, 0], -1).astype(jnp.int32)
          toks.append(t)
      else:
        toks += [tok + j for j in range(1, gamma + 1)]
      if kind in ("both", "verifier"):
        lg, vc = contract.score("verifier", (verifier.model, vp), vc, jnp.stack(toks, 1), n)
        nxt = jnp.argmax(lg[:, -1], -1).astype(jnp.int32)
      else:
        nxt = toks[-1]
      return dc, vc, nxt

    dc, vc, tok = jax.lax.fori_loop(0, iters, body, (dc, vc, x[:, 0]))
    return tok, jax.tree_util.tree_map(lambda c: c.ravel()[0], (dc, vc))

  x = jnp.asarray(inputs)
  jax.block_until_ready(run(drafter.params, verifier.params, x))
  return lambda: jax.block_until_ready(run(drafter.params, verifier.params, x))


def block_table(drafter, verifier, inputs, gamma: int, reps: int) -> None:
  iters = 12
  cache_length = 1 + (gamma + 1) * (iters + 1)
  fns = {k: block_loop(drafter, verifier, inputs, gamma, iters, k, cache_length)
         for k in ("both", "drafter", "verifier")}
  fns["setup"] = block_loop(drafter, verifier, inputs, gamma, 0, "both", cache_length)
  _, t = costs.interleaved(fns, reps, order_seed=0)
  per = {k: costs.per_call_seconds(t[k], t["setup"], iters) * 1e3
         for k in ("both", "drafter", "verifier")}
  apart = per["drafter"] + per["verifier"]
  print(f"\n| γ = {gamma}, batch 1, ms per block | |\n|---|---:|")
  print(f"| drafter calls, looped alone | {per['drafter']:.3f} |")
  print(f"| verify call ({gamma + 1} tokens), looped alone | {per['verifier']:.3f} |")
  print(f"| sum | {apart:.3f} |")
  print(f"| the same calls alternating | {per['both']:.3f} |")
  print(f"| alternation cost | {costs.ratio(per['both'], apart):.3f}× |")
  print(f"| set-up (both encoders and caches) | {t['setup'] * 1e3:.2f} |")


def setup_table(drafter, verifier, task: str, vocab: str | None, tokens: int,
                reps: int) -> None:
  """Set-up (encoder, cross-attention K/V, cache) and step of each model at batch 1, per input
  length, timed as the decode loop pays them (`costs.call_loop`)."""
  lengths = (64, 128, 256)
  data = infer.load_task(task, "validation", 1, 0, vocab, max(lengths))
  row = next(iter(infer.one_at_a_time(data)))[0]
  steps = 24
  fns = {}
  for n in lengths:
    x = np.zeros((1, n), np.int32)
    x[:, :min(n, row.shape[1])] = row[:, :n]
    for name, bundle in (("drafter", drafter), ("verifier", verifier)):
      for iters in (0, steps):
        fns[(name, n, iters)] = costs.call_loop(bundle, x, 1, tokens + 8, iters)
  _, t = costs.interleaved(fns, reps, order_seed=2)
  print(f"\n| batch 1, inputs of | drafter set-up ms | verifier set-up ms | verifier step ms | "
        f"drafter set-up / verifier step | drafter set-up / verifier-alone example "
        f"({tokens} tokens) |\n|---|---:|---:|---:|---:|---:|")
  for n in lengths:
    d0, v0 = t[("drafter", n, 0)], t[("verifier", n, 0)]
    step = costs.per_call_seconds(t[("verifier", n, steps)], v0, steps)
    print(f"| {n} tokens | {d0 * 1e3:.2f} | {v0 * 1e3:.2f} | {step * 1e3:.3f} | "
          f"{costs.ratio(d0, step):.2f} | {costs.ratio(d0, v0 + tokens * step):.3f} |")


def matmul_chain(rows: int, block: int, dependent: bool, weights):
  """A jitted chain of dots over `weights` (list of [256, 1024] and [1024, 256] matrices)."""

  def mm(x, w):
    if block == 0 or w.shape[1] <= block:
      return x @ w
    return jnp.concatenate([x @ w[:, c:c + block] for c in range(0, w.shape[1], block)],
                           axis=1)

  @jax.jit
  def run(x, ws):
    if dependent:  # an MLP stack: each dot needs the previous one's output
      for a, b in zip(ws[0::2], ws[1::2]):
        x = x + mm(jax.nn.gelu(mm(x, a)), b) * 0.1
      return x
    return sum(mm(x, w)[:, :256].sum() for w in ws)  # independent dots

  x = jnp.ones((rows, 256), jnp.float32)
  jax.block_until_ready(run(x, weights))
  return lambda: jax.block_until_ready(run(x, weights))


def matmul_table(reps: int, pairs: int = 26) -> None:
  """pairs: weight matrix pairs (2 MB of float32 each; 26 = 52 MB, more than the 32 MB L3)."""
  rng = np.random.default_rng(0)
  weights = []
  for _ in range(pairs):
    weights.append(jnp.asarray(rng.standard_normal((256, 1024)) * 0.05, jnp.float32))
    weights.append(jnp.asarray(rng.standard_normal((1024, 256)) * 0.05, jnp.float32))
  # 52 distinct [256, 1024] matrices for the independent dots (52 MB too).
  wide = weights[0::2] + [jnp.asarray(w.T.reshape(256, 1024)) for w in weights[1::2]]
  for dependent in (False, True):
    fns = {(m, b): matmul_chain(m, b, dependent, weights if dependent else wide)
           for m in (1, 2, 4, 8) for b in (0, 256)}
    _, t = costs.interleaved(fns, reps, order_seed=1)
    base = t[(1, 0)]
    what = (f"dependent MLP chain, {2 * pairs} MB" if dependent
            else f"independent [M, 256] × [256, 1024] dots, {2 * pairs} MB")
    print(f"\n| {what} | M = 1 | M = 2 | M = 4 | M = 8 |\n|---|---:|---:|---:|---:|")
    for b in (0, 256):
      label = "one dot per matrix" if b == 0 else f"split into {b}-column blocks"
      print(f"| {label} (ms; × M = 1 unsplit) | " + " | ".join(
          f"{t[(m, b)] * 1e3:.2f} ({t[(m, b)] / base:.2f}×)" for m in (1, 2, 4, 8)) + " |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--drafter", default="spec_cascade/assets/offline_pair/drafter")
  parser.add_argument("--verifier", default="spec_cascade/assets/offline_pair/verifier")
  parser.add_argument("--task", default="debian_ende")
  parser.add_argument("--gamma", type=int, default=3)
  parser.add_argument("--reps", type=int, default=30)
  parser.add_argument("--setup", action="store_true", help="the encoders' table")
  parser.add_argument("--tokens", type=int, default=32,
                      help="output tokens of the verifier-alone example in --setup's last column")
  parser.add_argument("--matmuls", action="store_true")
  parser.add_argument("--matmul_dtype", default=None,
                      help="bfloat16: the dense layers take bfloat16 inputs "
                           "(`T5Config.matmul_dtype`)")
  args = parser.parse_args(argv)
  drafter = Bundle(*infer.load_bundle(args.drafter, matmul_dtype=args.matmul_dtype))
  verifier = Bundle(*infer.load_bundle(args.verifier, matmul_dtype=args.matmul_dtype))
  data = infer.load_task(args.task, "validation", 1, 0,
                         infer.checkpoint_vocabulary(args.verifier), 64)
  x = next(iter(infer.one_at_a_time(data)))[0]
  print(f"drafter {args.drafter} ({drafter.model.num_params() / 1e6:.2f}M), verifier "
        f"{args.verifier} ({verifier.model.num_params() / 1e6:.2f}M); one {args.task} "
        f"validation input; matmul inputs {args.matmul_dtype or 'float32'}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  block_table(drafter, verifier, x, args.gamma, args.reps)
  if args.setup:
    setup_table(drafter, verifier, args.task, infer.checkpoint_vocabulary(args.verifier),
                args.tokens, max(args.reps // 3, 5))
  if args.matmuls:
    matmul_table(max(args.reps // 2, 5))


if __name__ == "__main__":
  main()
