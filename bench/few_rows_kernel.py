"""What the few-row CPU kernel (spec_cascade/models/cpu_kernels.py) buys a verify call.

    python bench/few_rows_kernel.py [--verifier V] [--drafter D] [--examples 12]

1. Products: a chain shaped like a decoder step of `--verifier` (per layer six attention
   projections, d × mlp per activation, mlp × d; then the d × vocab logits), M rows at a time,
   XLA's dot against the kernel, in one process, interleaved: GB/s of weights streamed, and
   the kernel's speed-up.
2. The verifier: v(k) = (a call scoring k tokens) / (a one-token step) at batch 1
   (`costs.call_loop`), with the kernel and with XLA's dot (`cpu_kernels.applies` switched off
   while tracing), in one process, interleaved.
3. End to end: `bench/default_pair_speed.py` (greedy, batch 1, `--task`) run in three child
   processes: XLA's dot (SPEC_CASCADE_CPU_KERNELS=0), the kernel on one thread and on two
   (SPEC_CASCADE_KERNEL_THREADS); each prints SpecDecode's speed-up over the verifier alone
   measured side by side in its process.

Run it alone on the machine: timings are not numbers beside a training run or tests.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from spec_cascade import costs, infer, pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from spec_cascade.models import cpu_kernels  # pylint: disable=g-import-not-at-top,wrong-import-position


def step_shapes(cfg) -> list[tuple[int, int]]:
  """[K, N] of the dense products of one decoder step (self- and cross-attention, MLP, logits)."""
  d, inner, mlp = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
  layer = [(d, inner)] * 3 + [(inner, d)] + [(d, inner), (inner, d)]
  layer += [(d, mlp)] * len(cfg.mlp_activations) + [(mlp, d)]
  return layer * cfg.num_decoder_layers + [(d, cfg.vocab_size)]


def products_table(cfg, reps: int) -> None:
  rng = np.random.default_rng(0)
  shapes = step_shapes(cfg)
  ws = [jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.05) for s in shapes]
  mb = sum(k * n for k, n in shapes) * 4 / 1e6

  def chain(dot):
    @jax.jit
    def run(x, ws):
      # Each product reads the newest output of its input width, as a decoder step does.
      latest, out = {x.shape[1]: x}, []
      for w in ws:
        y = dot(latest[w.shape[0]], w)
        latest[w.shape[1]] = jnp.tanh(y)
        out.append(y[:, 0])
      return jnp.stack(out)
    return run

  xla = chain(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  ker = chain(cpu_kernels.matmul)
  print(f"\n1. A decoder step's {len(shapes)} products ({mb:.1f} MB of float32 weights), "
        f"medians of {reps} interleaved rounds\n")
  print("| rows M | XLA dot ms | GB/s | kernel ms | GB/s | kernel speed-up | "
        "kernel ms / XLA at M = 1 |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  one = None
  for m in (1, 2, 3, 4, 5, 6, 8):
    x = jnp.asarray(rng.standard_normal((m, cfg.emb_dim), dtype=np.float32))
    np.testing.assert_allclose(ker(x, ws), xla(x, ws), rtol=1e-3, atol=1e-3)
    fns = {"xla": lambda x=x: jax.block_until_ready(xla(x, ws)),
           "ker": lambda x=x: jax.block_until_ready(ker(x, ws))}
    _, t = costs.interleaved(fns, reps, order_seed=m)
    one = t["xla"] if one is None else one
    print(f"| {m} | {1e3 * t['xla']:.3f} | {mb / 1e3 / t['xla']:.1f} | {1e3 * t['ker']:.3f} | "
          f"{mb / 1e3 / t['ker']:.1f} | {costs.ratio(t['xla'], t['ker']):.2f} | "
          f"{costs.ratio(t['ker'], one):.2f} |")


def verifier_table(verifier: str, reps: int) -> None:
  _, _, make_inputs = pretrained.offline_pair_for_bench(task="debian_ende")
  bundle = infer.load_bundle(verifier)
  x = make_inputs(1, 64)
  iters, ks = 48, (1, 2, 4, 6)
  fns = {}
  orig = cpu_kernels.applies
  for variant in ("kernel", "xla"):
    cpu_kernels.applies = orig if variant == "kernel" else (lambda x, w: False)
    try:
      for k in ks:
        for n in (0, iters):
          fns[(variant, k, n)] = costs.call_loop(bundle, x, k, 72, n)
    finally:
      cpu_kernels.applies = orig
  _, t = costs.interleaved(fns, reps, order_seed=0)
  print(f"\n2. {verifier}, batch 1: v(k) = a call scoring k tokens / a one-token step "
        f"(medians of {reps} interleaved rounds)\n")
  print("| products | step ms | v(2) | v(4) | v(6) |")
  print("|---|---:|---:|---:|---:|")
  for variant in ("xla", "kernel"):
    per = {k: costs.per_call_seconds(t[(variant, k, iters)], t[(variant, k, 0)], iters)
           for k in ks}
    name = "XLA's dot" if variant == "xla" else "few-row kernel"
    print(f"| {name} | {1e3 * per[1]:.3f} | " + " | ".join(
        f"{costs.ratio(per[k], per[1]):.2f}" for k in ks[1:]) + " |")


def end_to_end(args) -> None:
  print(f"\n3. Greedy SpecDecode against the verifier alone, batch 1, end to end "
        f"(bench/default_pair_speed.py, {args.examples} {args.task} examples, inputs padded "
        f"to {args.input_length}, one child process per setting)\n")
  cmd = [sys.executable, os.path.join(ROOT, "bench", "default_pair_speed.py"),
         "--tasks", args.task, "--input_length", str(args.input_length),
         "--examples", str(args.examples), "--gammas", args.gammas,
         "--confidences", "", "--temperatures", "", "--batches", "", "--rounds", "2"]
  if args.drafter:
    cmd += ["--drafter", args.drafter, "--verifier", args.verifier]
  settings = {"xla": {"SPEC_CASCADE_CPU_KERNELS": "0"},
              "one": {"SPEC_CASCADE_CPU_KERNELS": "1", cpu_kernels.ENV_THREADS: "1"},
              "two": {"SPEC_CASCADE_CPU_KERNELS": "1", cpu_kernels.ENV_THREADS: "2"}}
  rows = {}
  for setting, extra in settings.items():
    env = dict(os.environ, **extra)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    rows[setting] = dict(re.findall(r"greedy SpecDecode (γ=\S+)\s+([\d.]+)×", out.stdout))
  print("| greedy SpecDecode | speed-up, XLA's dot | kernel, one thread | kernel, two threads |")
  print("|---|---:|---:|---:|")
  for name in rows["two"]:
    print(f"| {name} | {rows['xla'].get(name, '?')}× | {rows['one'].get(name, '?')}× | "
          f"{rows['two'][name]}× |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--verifier", default="spec_cascade/assets/offline_pair/verifier")
  parser.add_argument("--drafter", default="spec_cascade/assets/offline_pair/drafter",
                      help="'' for the committed pair in part 3")
  parser.add_argument("--examples", type=int, default=12)
  parser.add_argument("--task", default="debian_ende", help="part 3's task")
  parser.add_argument("--input_length", type=int, default=64, help="part 3's input padding")
  parser.add_argument("--gammas", default="1,3,5")
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--parts", default="1,2,3")
  args = parser.parse_args(argv)
  if not cpu_kernels.available():
    raise SystemExit("The few-row kernel is not available here (see the warning above).")
  print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs")
  parts = set(args.parts.split(","))
  if "1" in parts:
    products_table(infer.load_bundle(args.verifier)[0].config, args.reps)
  if "2" in parts:
    verifier_table(args.verifier, args.reps)
  if "3" in parts:
    end_to_end(args)


if __name__ == "__main__":
  main()
