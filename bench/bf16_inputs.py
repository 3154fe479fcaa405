"""bfloat16 matmul inputs (`matmul_dtype='bfloat16'`) against float32 ones, side by side in
one process, on the committed pair at batch 1.

    python bench/bf16_inputs.py [--pair DIR] [--task debian_ende] [--examples 16]
        [--gammas 1,2,3] [--rounds 2] [--reps 15]

With bfloat16 inputs the dense layers' products of 1-64 rows run on the paired kernel
(AVX512-BF16: exact products of bfloat16 values summed in float32, two k per instruction), the
mixed precision T5X runs on TPUs; norms, softmax, attention and residuals stay float32. The pair
is loaded once per setting ('float32': the default, float32 inputs with bfloat16 weight twins;
'bfloat16': `load_offline_pair(matmul_dtype='bfloat16')`), and every program compiled for each
setting with its own program cache. Then:

1. The verifier at batch 1 (`costs.call_loop`): a one-token step and v(k) = a call scoring k
   tokens / a one-token step, per setting, interleaved; the drafter's step (c = drafter step
   / verifier step); each model's set-up for the first input (encoder, cross-attention keys
   and values, cache: the loop of no calls).
2. Batch 1, each validation example alone, end to end, greedy: the verifier alone and
   SpecDecode at each γ of `--gammas` in both settings, interleaved in a fresh random order per
   example, `--rounds` rounds (medians). Within a setting every method must give that setting's
   verifier-alone tokens (else FAIL); across settings the tokens may differ (bfloat16 rounds
   the inputs), and the share of tokens the two verifiers agree on is printed.
3. At each batch of `--batches`: the verifier's step and v(2), v(4), then `--batch_examples`
   validation examples in consecutive batches, end to end.

Nothing else may run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_cascade import costs, infer, pretrained, programs  # noqa: E402
from spec_cascade.decoding import generate  # noqa: E402
from spec_cascade.models import cpu_kernels  # noqa: E402
import side_by_side  # noqa: E402  pylint: disable=wrong-import-position

SETTINGS = {"float32": None, "bfloat16": "bfloat16"}


class Setting:
  """Runs programs with one setting's own program cache."""

  caches = {s: programs.ProgramCache() for s in SETTINGS}

  def __init__(self, setting: str):
    self.setting = setting

  def __enter__(self):
    self.saved = programs.PROGRAMS
    programs.PROGRAMS = self.caches[self.setting]

  def __exit__(self, *exc):
    programs.PROGRAMS = self.saved


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  side_by_side.add_arguments(parser, gammas="1,2,3")
  parser.add_argument("--reps", type=int, default=15, help="rounds of part 1's loops")
  parser.add_argument("--batches", default="8,32",
                      help="part 3: batch sizes ('' skips)")
  parser.add_argument("--batch_examples", type=int, default=64,
                      help="part 3: validation examples decoded in batches")
  args = parser.parse_args(argv)
  if not (cpu_kernels.available() and cpu_kernels.paired_kernel_available()):
    raise SystemExit("the paired kernel needs the few-row kernel and AVX512-BF16; this machine "
                     "has not both: nothing to compare")
  pairs = {s: pretrained.load_offline_pair(args.pair, matmul_dtype=mm)[:2]
           for s, mm in SETTINGS.items()}
  vocab = pretrained.offline_vocab_path(args.pair)
  data = infer.load_task(args.task, "validation", args.examples, 0, vocab, args.input_length)
  xs = [x for x, _ in infer.one_at_a_time(data)]
  side_by_side.header(*pairs["bfloat16"], args, len(xs))
  step_costs(pairs, xs[0], args)
  configs, res = side_by_side.decode_all(pairs, Setting, xs, args, generate)
  print(f"\n2. batch 1, {len(xs)} examples one at a time, end to end, medians of "
        f"{args.rounds} rounds\n")
  side_by_side.before_after(res, "float32", "bfloat16", configs,
                            ("float32 inputs", "bfloat16 inputs"), same_tokens=False)
  batches = [int(b) for b in args.batches.split(",") if b]
  if batches:
    data = infer.load_task(args.task, "validation", args.batch_examples, 0, vocab,
                           args.input_length)
  for batch in batches:
    batch_costs(pairs, data, batch, args)


def batch_costs(pairs, data, batch: int, args) -> None:
  """Part 3: a batch's one-token step and v(2), v(4) per setting, then the examples in
  consecutive batches end to end (the verifier alone and SpecDecode)."""
  batches = infer.make_batches(data, batch)
  print(f"\n3. batch {batch}: the verifier's calls, then {len(data.examples)} examples in "
        f"batches end to end, medians of {args.rounds} rounds\n")
  side_by_side.verifier_calls(pairs, Setting, batches[0].inputs, (1, 2, 4),
                              args.max_decode_length + 8, 16, max(args.reps // 3, 5),
                              "matmul inputs")

  configs, res = side_by_side.decode_all(pairs, Setting, [b.inputs for b in batches], args,
                                         generate, ids=[b.example_ids for b in batches])
  print()
  side_by_side.before_after(res, "float32", "bfloat16", configs,
                            ("float32 inputs", "bfloat16 inputs"), same_tokens=False)


def step_costs(pairs, x, args) -> None:
  """Part 1: one-token steps and v(k) per setting, the drafter's step, both set-ups."""
  ks, cache_length, loops = (1, 2, 3, 4), args.max_decode_length + 8, 48
  fns = {}
  for setting in SETTINGS:
    with Setting(setting):
      for who, bundle, kinds in (("verifier", pairs[setting][1], ks),
                                 ("drafter", pairs[setting][0], (1,))):
        for k in kinds:
          for n in (loops, 0):
            fns[(setting, who, k, n)] = costs.call_loop(bundle, x, k, cache_length, n)
  _, secs = costs.interleaved(fns, args.reps, order_seed=0)
  print(f"\n1. Decode calls at batch 1, compiled call loops, medians of {args.reps} rounds\n")
  print("| matmul inputs | verifier step ms | " + " | ".join(f"v({k})" for k in ks[1:])
        + " | drafter step ms | c | verifier set-up ms | drafter set-up ms |")
  print("|---|---:|" + "---:|" * (len(ks) - 1) + "---:|---:|---:|---:|")
  for setting in SETTINGS:
    per = {(who, k): costs.per_call_seconds(secs[(setting, who, k, loops)],
                                            secs[(setting, who, k, 0)], loops)
           for who, kinds in (("verifier", ks), ("drafter", (1,))) for k in kinds}
    step = per[("verifier", 1)]
    print(f"| {setting} | {1e3 * step:.3f} | "
          + " | ".join(f"{per[('verifier', k)] / step:.2f}" for k in ks[1:])
          + f" | {1e3 * per[('drafter', 1)]:.3f} | {per[('drafter', 1)] / step:.3f} | "
          f"{1e3 * secs[(setting, 'verifier', 1, 0)]:.2f} | "
          f"{1e3 * secs[(setting, 'drafter', 1, 0)]:.2f} |")


if __name__ == "__main__":
  main()
