"""Speculative decoding speed-up over verifier-only decoding, measured vs analytic.

    python bench/engine_speedup.py [--pair synthetic|offline] [--batches 1,8,32] [--gammas 1,3,5,7]

For each batch size and γ: tokens/s of greedy SpecDecode and of greedy verifier-only
decoding on the same inputs (outputs must be identical, else the benchmark fails), the
measured speed-up, and the analytic speed-up from the measured acceptance rate a and the
measured per-call costs at that batch size:

    analytic = E[tokens per block] · t_v(1) / ((γ + 1) · t_d(1) + t_v(γ + 1)),
    E[tokens per block] = (1 − a^(γ+1)) / (1 − a)

where t_d(1) is a drafter decode call (our loop makes γ + 1 of them per block: the last one
yields q_γ), t_v(k) a verifier call scoring k tokens. efficiency = measured / analytic.

The `synthetic` pair needs no training: the verifier is the drafter plus extra decoder layers
whose residual contributions are scaled down, so the two agree on most tokens while the
verifier costs several drafter steps. `offline` loads the committed offline default pair.
"""
from __future__ import annotations

import argparse
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade.decoding import Bundle, generate
from spec_cascade.models import T5Model, get_config


def synthetic_pair(extra_layers: int = 6, scale: float = 0.15):
  cfg = get_config("tiny").replace(vocab_size=4224)
  d_model = T5Model(cfg)
  v_model = T5Model(cfg.replace(num_decoder_layers=cfg.num_decoder_layers + extra_layers,
                                num_encoder_layers=cfg.num_encoder_layers))
  d_params = d_model.init_params(jax.random.key(0))
  v_params = v_model.init_params(jax.random.key(1))
  d_flat = flax.traverse_util.flatten_dict(d_params, sep="/")
  v_flat = flax.traverse_util.flatten_dict(v_params, sep="/")
  for k in v_flat:
    if k in d_flat:
      v_flat[k] = d_flat[k]
    elif k.endswith("out/kernel") or k.endswith("wo/kernel"):
      v_flat[k] = v_flat[k] * scale
  # Move the extra layers before the final norm: layers 2.. of the verifier are the extra ones.
  return (Bundle(d_model, d_params),
          Bundle(v_model, flax.traverse_util.unflatten_dict(v_flat, sep="/")))


def call_cost(bundle: Bundle, batch: int, k: int, inputs, reps: int = 20) -> float:
  """Median seconds of one decode_block call scoring k tokens."""
  model, params = bundle
  encoded, mask = model.encode(params, jnp.asarray(inputs))
  cache = model.init_cache(params, encoded, mask, 96)
  step = jax.jit(model.decode_block)
  toks = jnp.ones((batch, k), jnp.int32)
  offs = jnp.full((batch,), 16, jnp.int32)
  jax.block_until_ready(step(params, cache, toks, offs))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, cache, toks, offs))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def timed(fn, trials: int):
  fn()  # compile + warm
  best = []
  out = None
  for _ in range(trials):
    out = fn()
    best.append(out.wall_s)
  return out, float(np.median(best))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--pair", default="synthetic", choices=["synthetic", "offline"])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--gammas", default="1,3,5,7")
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--trials", type=int, default=3)
  args = parser.parse_args()
  if args.pair == "synthetic":
    drafter, verifier = synthetic_pair()
    vocab = drafter.model.config.vocab_size
    rng = np.random.default_rng(0)
    make_inputs = lambda b: rng.integers(2, vocab, (b, 32)).astype(np.int32)
  else:
    from spec_cascade import pretrained
    drafter, verifier, make_inputs = pretrained.offline_pair_for_bench()
  print(f"jax {jax.__version__}; pair={args.pair}; drafter {drafter.model.num_params()/1e6:.1f}M "
        f"params, verifier {verifier.model.num_params()/1e6:.1f}M; greedy; "
        f"max_decode_length={args.max_decode_length}")
  print(f"{'batch':>5} {'γ':>2} {'accept':>6} {'tok/call':>8} {'c':>5} {'verif tok/s':>11} "
        f"{'spec tok/s':>10} {'speedup':>7} {'analytic':>8} {'effic.':>6}")
  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    x = make_inputs(batch)
    kw = dict(temperature=0.0, max_decode_length=args.max_decode_length)
    v_out, v_time = timed(lambda: generate(drafter, verifier, x, method="verifier", **kw),
                          args.trials)
    t_d1 = call_cost(drafter, batch, 1, x)
    t_v1 = call_cost(verifier, batch, 1, x)
    for gamma in (int(g) for g in args.gammas.split(",")):
      s_out, s_time = timed(lambda: generate(drafter, verifier, x, method="spec_decode",
                                             num_draft_tokens=gamma, **kw), args.trials)
      if not np.array_equal(s_out.tokens, v_out.tokens):
        raise SystemExit(f"FAIL: greedy SpecDecode differs from the verifier at batch {batch}, "
                         f"γ {gamma}")
      c = s_out.counters
      a = c["accepted"].sum() / max(c["drafted"].sum(), 1)
      t_vk = call_cost(verifier, batch, gamma + 1, x)
      expected_tokens = (1 - a ** (gamma + 1)) / (1 - a) if a < 1 else gamma + 1
      analytic = expected_tokens * t_v1 / ((gamma + 1) * t_d1 + t_vk)
      tokens = v_out.lengths.sum()
      measured = v_time / s_time
      print(f"{batch:5d} {gamma:2d} {a:6.2f} {c['output_tokens'].sum() / c['blocks'].sum():8.2f} "
            f"{t_d1 / t_v1:5.2f} {tokens / v_time:11.0f} {tokens / s_time:10.0f} "
            f"{measured:7.2f} {analytic:8.2f} {measured / analytic:6.2f}", flush=True)
      rows.append((batch, gamma, a, measured, analytic))
  return rows


if __name__ == "__main__":
  main()
