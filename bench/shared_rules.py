"""One program for every SpecCascade rule (`rule_set`) against one program per rule: what each
costs to compile, and whether the shared program decodes as fast (the sweep uses it).

    python bench/shared_rules.py [--task debian_ende] [--batches 1,16] [--examples 16]
        [--input_length 128] [--max_decode_length 64] [--gamma 5] [--rounds 3]

On the committed offline pair and real validation inputs (the main job's lengths), for each
batch size: every rule's own program and the shared program are compiled (compile = first
call − a warm call of the same batch), then each rule is decoded by both, interleaved in a
fresh random order per round (median over rounds, summed over batches). Prints per rule the
shared/own decode-time ratio and checks both programs give the same tokens (exit 1 if not).
Timings are not numbers while anything else runs on the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spec_cascade import infer, pretrained  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402

# The paper's SpecCascade rules, as the main job's sweep runs them, at a mid-range α each.
RULES = {"bild_star": 1.0, "chow": 0.4, "diff": 0.0, "opt": 0.0, "token_v1": 0.2,
         "token_v2": 0.2, "token_v3": 0.5}


def _decode_all(drafter, verifier, batches, kw) -> tuple[np.ndarray, float]:
  """Tokens of every batch (rows stacked) and the summed decode seconds."""
  toks, secs = [], 0.0
  for x, ids in batches:
    out = generate(drafter, verifier, x, example_ids=ids, **kw)
    toks.append(out.tokens[:len(ids)])
    secs += out.wall_s
  return np.concatenate(toks), secs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", default="debian_ende")
  parser.add_argument("--batches", default="1,16")
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--input_length", type=int, default=128)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  drafter, verifier, _ = pretrained.load_offline_pair()
  data = infer.load_task(args.task, "validation", args.examples, 0,
                         pretrained.offline_vocab_path(), args.input_length)
  print(f"{args.task}: {args.examples} validation examples, inputs {args.input_length}, ≤ "
        f"{args.max_decode_length} new tokens, γ {args.gamma}, T {args.temperature:g}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  rule_set = tuple(RULES)
  failed = False
  for bs in [int(b) for b in args.batches.split(",") if b]:
    batches = [(b.inputs, b.example_ids) for b in infer.make_batches(data, bs)]
    base = dict(method="spec_cascade", num_draft_tokens=args.gamma,
                max_decode_length=args.max_decode_length, temperature=args.temperature)
    configs = {}
    for rule, alpha in RULES.items():
      configs[(rule, "own")] = dict(base, rule=rule, alpha=alpha)
      configs[(rule, "shared")] = dict(base, rule=rule, alpha=alpha, rule_set=rule_set)
    compile_s = {"own": 0.0, "shared": 0.0}
    for (rule, kind), kw in configs.items():
      if kind == "shared" and rule != rule_set[0]:
        continue  # compiled once, with the first rule
      x, ids = batches[0]
      t0 = time.perf_counter()
      generate(drafter, verifier, x, example_ids=ids, **kw)
      first = time.perf_counter() - t0
      warm = generate(drafter, verifier, x, example_ids=ids, **kw).wall_s
      compile_s[kind] += max(first - warm, 0.0)
    secs = {k: [] for k in configs}
    tokens = {}
    rng = np.random.default_rng(0)
    names = list(configs)
    for _ in range(args.rounds):
      for i in rng.permutation(len(names)):
        tokens[names[i]], s = _decode_all(drafter, verifier, batches, configs[names[i]])
        secs[names[i]].append(s)
    print(f"\nbatch {bs}: compile {compile_s['own']:.1f} s for {len(RULES)} programs (one per "
          f"rule), {compile_s['shared']:.1f} s for the shared one "
          f"({compile_s['own'] / max(compile_s['shared'], 1e-9):.1f}× less)")
    print("| rule | own program s | shared program s | shared / own | same tokens |\n"
          "|---|---:|---:|---:|---|")
    ratios = []
    for rule in RULES:
      own, shared = (float(np.median(secs[(rule, k)])) for k in ("own", "shared"))
      same = np.array_equal(tokens[(rule, "own")], tokens[(rule, "shared")])
      failed |= not same
      ratios.append(shared / own)
      print(f"| {rule} | {own:.3f} | {shared:.3f} | {shared / own:.3f} | "
            f"{'yes' if same else 'NO'} |")
    print(f"geometric mean shared / own: {float(np.exp(np.mean(np.log(ratios)))):.3f}")
  if failed:
    print("FAIL: a rule decoded differently in the shared program")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
