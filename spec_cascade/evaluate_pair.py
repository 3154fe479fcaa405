"""Measures a drafter/verifier pair: greedy quality of each, their agreement, and the cost ratio c.

    python -m spec_cascade.evaluate_pair --drafter=DIR --verifier=DIR [--num_examples=200]
        [--tasks=debian_ende,debian_summarize] [--split=validation] [--json=out.json]
        [--matmul_dtype=bfloat16]

With no --drafter/--verifier it evaluates the committed offline default pair. For each task:
greedy BLEU / ROUGE-2 of the drafter and of the verifier, and the T = 0 acceptance rate — the
fraction of positions along the verifier's greedy output where the drafter's greedy token equals
it (both models teacher-forced on that output) — then c = drafter decode-step time / verifier
decode-step time, each step timed inside a compiled loop as the engine runs it
(`spec_cascade.costs`), at batch 1 and the evaluation batch size.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from spec_cascade import gin_cli


def agreement(drafter, verifier, inputs: np.ndarray, v_tokens: np.ndarray,
              v_lengths: np.ndarray) -> tuple[int, int]:
  """(positions where argmax q == the verifier's greedy token, positions) over a batch.

  inputs [B, S]; v_tokens [B, L] the verifier's greedy outputs with lengths [B].
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spec_cascade.models import shift_right  # pylint: disable=g-import-not-at-top
  dec_in = shift_right(jnp.asarray(v_tokens))
  q = drafter.model.forward(drafter.params, jnp.asarray(inputs), dec_in)
  same = np.asarray(jnp.argmax(q, axis=-1)) == v_tokens
  valid = np.arange(v_tokens.shape[1])[None, :] < v_lengths[:, None]
  return int((same & valid).sum()), int(valid.sum())


def evaluate(drafter, verifier, task: str, num_examples: int = 200, split: str = "validation",
             batch_size: int = 32, max_decode_length: int = 64, vocabulary_path=None,
             seed: int = 0) -> dict:
  from spec_cascade import decoding, infer  # pylint: disable=g-import-not-at-top
  data = infer.load_task(task, split, num_examples, seed=seed, vocabulary_path=vocabulary_path)
  batches = infer.make_batches(data, batch_size)
  metric = infer.metric_name(task)
  out = {"task": task, "split": split, "num_examples": len(data.examples), "metric": metric,
         "truncated_inputs": data.truncated}
  targets = [e.targets for e in data.examples]
  runs = {}
  for name in ("drafter", "verifier"):
    run = infer.decode_batches(drafter, verifier, batches, len(data.examples),
                               decoding.DecodeConfig(method=name, temperature=0.0,
                                                     max_decode_length=max_decode_length))
    runs[name] = run
    out[f"{name}_scores"] = infer.score(targets, infer.predictions_of(data, run), metric)
  same = total = 0
  v = runs["verifier"]
  for b in batches:
    n = b.num_real
    lengths = np.asarray(v.counters["output_tokens"][b.positions], np.int64)
    s, t = agreement(drafter, verifier, b.inputs[:n], v.tokens[b.positions], lengths)
    same, total = same + s, total + t
  out["greedy_agreement"] = same / max(total, 1)
  out["quality_gap"] = (out["verifier_scores"][metric] - out["drafter_scores"][metric])
  return out


@gin_cli.cli_main
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--drafter")
  parser.add_argument("--verifier")
  parser.add_argument("--tasks", default="debian_ende,debian_summarize")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--num_examples", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--vocabulary_path")
  parser.add_argument("--json")
  parser.add_argument("--matmul_dtype", default=None,
                      help="bfloat16: both models' dense layers take bfloat16 inputs "
                           "(T5Config.matmul_dtype)")
  args = parser.parse_args(argv)
  from spec_cascade import costs, infer, pretrained  # pylint: disable=g-import-not-at-top
  if bool(args.drafter) != bool(args.verifier):
    parser.error("give both --drafter and --verifier, or neither (the offline default pair).")
  if args.drafter:
    drafter, verifier = (infer.load_bundle(p, matmul_dtype=args.matmul_dtype)
                         for p in (args.drafter, args.verifier))
    vocab = args.vocabulary_path
  else:
    drafter, verifier, _ = pretrained.load_offline_pair(matmul_dtype=args.matmul_dtype)
    vocab = args.vocabulary_path or pretrained.offline_vocab_path()
  results = {"tasks": []}
  for task in args.tasks.split(","):
    r = evaluate(drafter, verifier, task, args.num_examples, args.split, args.batch_size,
                 args.max_decode_length, vocab)
    results["tasks"].append(r)
    m = r["metric"]
    print(f"{task} ({args.split}, {r['num_examples']} examples): {m} drafter "
          f"{r['drafter_scores'][m]:.2f}, verifier {r['verifier_scores'][m]:.2f} (gap "
          f"{r['quality_gap']:+.2f}); T=0 agreement {r['greedy_agreement']:.3f}", flush=True)
  rng = np.random.default_rng(0)
  vocab_size = drafter.model.config.vocab_size
  for batch in (1, args.batch_size):
    x = rng.integers(2, vocab_size, (batch, 128)).astype(np.int32)
    c = costs.measure_cost_ratio(drafter, verifier, x, cache_length=args.max_decode_length + 8)
    results[f"cost_ratio_batch{batch}"] = c
    print(f"c (drafter / verifier decode call, batch {batch}, inputs 128): {c['c']:.3f} "
          f"({c['drafter_call_s'] * 1e3:.2f} / {c['verifier_call_s'] * 1e3:.2f} ms)", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=float)
  return 0


if __name__ == "__main__":
  sys.exit(main())
