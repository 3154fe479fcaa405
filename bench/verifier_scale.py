"""Where speculation starts to pay on this machine: the same drafter against verifiers of
growing size that all compute the committed verifier's function.

    python bench/verifier_scale.py [--pair DIR] [--task debian_ende] [--examples 12]
        [--scales 4x640x4+8,16x2560x4+8,16x2560x8+24] [--gammas 1,2,3,5] [--matmul_dtype bfloat16]

Each scale HEADSxMLPxENC+DEC is the committed verifier widened to HEADS attention heads and
MLP units (`models.grow.widen`) and deepened to ENC + DEC layers (`grow.deepen`): every new
head, unit and layer copies a trained one and adds exactly zero to the residual stream. So
each scale gives the committed verifier's tokens (up to float32 rounding at near-ties, counted
in the table), the drafter's acceptance is the pair's real one, and what changes is only what
a verifier step costs: its weights (bfloat16 twins, `cpu_kernels.stream_params`) go from
fitting this CPU's L3 to streaming from memory, the regime speculative decoding exploits (a
verify call of a few rows then costs about one step). The scales' quality is the committed
verifier's, not a larger model's; the table is about cost.

Per scale, on the same `--examples` validation examples, each decoded alone (batch 1, greedy,
end to end, encoders included; methods interleaved per example): c and v(γ+1) timed in compiled
loops, the verifier alone and SpecDecode at every γ and at 'auto' (which must all give the
verifier's tokens, else FAIL), speed-ups over that scale's verifier alone, the paper's per-row
bound at the best γ and that bound with each example's set-ups (both encoders) added, and
SpecDecode's efficiency against each. Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default_pair_speed  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from spec_cascade import autogamma, checkpoints, infer, pretrained  # noqa: E402
from spec_cascade.decoding import Bundle, contract  # noqa: E402
from spec_cascade.models import cpu_kernels, grow  # noqa: E402

_SCALE = re.compile(r"^(\d+)x(\d+)x(\d+)\+(\d+)$")


def parse_scale(text: str) -> tuple[int, int, int, int]:
  """'16x2560x4+8' → (heads, mlp_dim, encoder layers, decoder layers)."""
  m = _SCALE.match(text.strip())
  if not m:
    raise ValueError(f"a scale is HEADSxMLPxENC+DEC (e.g. 16x2560x4+8), got {text!r}.")
  return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def scaled_verifier(params, config, scale, matmul_dtype=None) -> tuple[Bundle, float]:
  """→ (the verifier (params, config: its T5 tree and T5Config) grown to `scale`
  (parse_scale), with the streamed twins the engine loads (infer.load_bundle); MB of the
  dense kernels one decode step reads — the decoder's and the output layer's — at 2 bytes
  each, as the few-row kernels read their bfloat16 twins)."""
  heads, mlp, enc, dec = scale
  config, params = grow.widen(params, config, num_heads=heads, mlp_dim=mlp)
  config, params = grow.deepen(params, config, num_encoder_layers=enc, num_decoder_layers=dec)
  if matmul_dtype:
    config = config.replace(matmul_dtype=matmul_dtype)
  step = sum(int(np.prod(x.shape)) for path, x in
             jax.tree_util.tree_flatten_with_path(params["decoder"])[0]
             if "kernel" in jax.tree_util.keystr(path))
  return (Bundle(contract.model_for(config), cpu_kernels.stream_params(params, matmul_dtype)),
          2 * step / 1e6)


def grown_offline_verifier(scale: str, pair=None, matmul_dtype=None, src=None) -> Bundle:
  """The verifier at `src` (default: the offline pair's, `pair` as in load_offline_pair) grown
  to `scale` ('HEADSxMLPxENC+DEC'), as the engine loads it — for the benches' --grow_verifier."""
  src = src or pretrained.check_offline_pair(pair) / pretrained.VERIFIER
  params, config = checkpoints.load_params(str(src))
  return scaled_verifier(params, config, parse_scale(scale), matmul_dtype)[0]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pair", default=None, help="pair folder (default: the committed one)")
  parser.add_argument("--task", default="debian_ende")
  parser.add_argument("--examples", type=int, default=12)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--scales", default="4x640x4+8,16x2560x4+8,16x2560x8+24")
  parser.add_argument("--gammas", default="1,2,3,5")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--matmul_dtype", default=None)
  args = parser.parse_args(argv)
  gammas = [int(g) for g in args.gammas.split(",") if g]
  scales = [parse_scale(s) for s in args.scales.split(",") if s]

  drafter, _, _ = pretrained.load_offline_pair(args.pair, matmul_dtype=args.matmul_dtype)
  root = pretrained.check_offline_pair(args.pair)
  params, config = checkpoints.load_params(str(root / pretrained.VERIFIER))
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, args.seed, vocab,
                         args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  print(f"drafter {drafter.model.num_params() / 1e6:.2f}M; {args.task}, {len(xs)} validation "
        f"examples, inputs padded to {args.input_length}, ≤ {args.max_decode_length} new "
        f"tokens; batch 1, greedy, end to end; matmul inputs {args.matmul_dtype or 'float32'}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
  g_accept = 1 if 1 in gammas else gammas[0]  # the acceptance column's γ
  head = "| verifier (heads × MLP × layers) | params | step weights MB | step ms | c | " + \
         " | ".join(f"v({g + 1})" for g in gammas) + \
         f" | committed tokens | acceptance γ={g_accept} | " + \
         " | ".join(f"SD γ={g}" for g in gammas) + \
         " | 'auto' | set-ups ms (verifier / drafter) | tokens / example | " + \
         "bound, best γ: per row / with set-ups | efficiency: per row / with set-ups |"
  print(head)
  print("|---" * (head.count("|") - 1) + "|")
  rows, reference = [], None
  auto = dict(num_draft_tokens="auto", draft_candidates=tuple(gammas))
  for scale in scales:
    autogamma.clear_cache()  # each scale's 'auto' measures its own verifier
    verifier, step_mb = scaled_verifier(params, config, scale, args.matmul_dtype)
    c, v = default_pair_speed.measure_costs(drafter, verifier, xs[0], gammas,
                                            args.max_decode_length + 8, reps=20)
    base = dict(temperature=0.0, max_decode_length=args.max_decode_length)
    configs = {"verifier": dict(base, method="verifier")}
    configs.update({f"γ={g}": dict(base, method="spec_decode", num_draft_tokens=g)
                    for g in gammas})
    configs["auto"] = dict(base, method="spec_decode", **auto)
    res = default_pair_speed.run_per_example(drafter, verifier, xs, configs, args.rounds)
    tokens, _, v_s, _ = res["verifier"]
    for name, (tok, *_rest) in res.items():
      if not np.array_equal(tok, tokens):
        raise SystemExit(f"FAIL: greedy SpecDecode {name} differs from its verifier at {scale}")
    if reference is None:
      reference = tokens
    same = float(np.mean(tokens == reference)) if tokens.shape == reference.shape else 0.0
    speed = {name: v_s / res[name][2] for name in configs if name != "verifier"}
    accept = {g: autogamma.acceptance_estimate(res[f"γ={g}"][1]) for g in gammas}
    bounds = {g: autogamma.predicted_speedup(accept[g], g, c["c"], v[g]) for g in gammas}
    best = max(bounds, key=bounds.get)
    # The per-row bound leaves out each example's set-up, which the verifier alone pays too
    # (its encoder) and speculation pays twice (both encoders): with them, the best SpecDecode
    # can do per example is (S_v + N·s) / (S_v + S_d + N·s / bound).
    n = float(np.mean(np.sum(tokens != 0, axis=1)))
    s_v, s_d, step = c["verifier_setup_s"], c["drafter_setup_s"], c["verifier_call_s"]
    whole = (s_v + n * step) / (s_v + s_d + n * step / bounds[best])
    sd_best = speed[f"γ={best}"]
    heads, mlp, enc, dec = scale
    row = (f"| {heads} × {mlp} × {enc}+{dec} | {verifier.model.num_params() / 1e6:.1f}M | "
           f"{step_mb:.0f} | {1e3 * c['verifier_call_s']:.3f} | "
           f"{c['c']:.3f} | " + " | ".join(f"{v[g]:.2f}" for g in gammas) +
           f" | {same:.3f} | {accept[g_accept]:.3f} | " +
           " | ".join(f"{speed[f'γ={g}']:.2f}×" for g in gammas) +
           f" | {speed['auto']:.2f}× (γ {res['auto'][3]}) | {1e3 * s_v:.1f} / "
           f"{1e3 * s_d:.1f} | {n:.1f} | {bounds[best]:.2f} / {whole:.2f} (γ {best}) | "
           f"{sd_best / bounds[best]:.2f} / {sd_best / whole:.2f} |")
    rows.append((scale, speed))
    print(row, flush=True)
    del verifier
  return rows


if __name__ == "__main__":
  main()
