"""What encoding each input once saves: a drafter that shares the verifier's encoder.

    python bench/shared_encoder.py [--verifier V] [--examples 16] [--gamma 3]

The drafter is the verifier cut to its first decoder layer (`models.grow.keep_layers`: same
embedding and encoder, so `contract.shares_encoder` holds; untrained, so its acceptance is low
— what is measured here is the set-up, not the drafts). Per task, on the same validation
examples decoded one at a time (batch 1, greedy SpecDecode, inputs padded to the main job's
lengths): SpecDecode with the encoder shared (the default) against `share_encoder=False`,
and the verifier alone, interleaved per example in a fresh random order each round. The
outputs must be identical with and without sharing (else FAIL).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spec_cascade import infer  # noqa: E402
from spec_cascade.decoding import Bundle, contract, generate  # noqa: E402
from spec_cascade.models import T5Model, grow  # noqa: E402

LENGTHS = {"debian_ende": (128, 64), "debian_summarize": (256, 32)}  # configs/offline/main.gin


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--verifier", default="spec_cascade/assets/offline_pair/verifier")
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--gamma", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  verifier = Bundle(*infer.load_bundle(args.verifier))
  cfg, params = grow.keep_layers(verifier.params, verifier.model.config, decoder_layers=[0])
  drafter = Bundle(T5Model(cfg), params)
  assert contract.shares_encoder(drafter, verifier)
  print(f"verifier {args.verifier} ({verifier.model.num_params() / 1e6:.2f}M), drafter = its "
        f"first decoder layer ({drafter.model.num_params() / 1e6:.2f}M); {args.examples} "
        f"validation examples per task, batch 1, greedy, γ {args.gamma}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
  ok = True
  rng = np.random.default_rng(0)
  print("\n| task (input tokens) | verifier alone s | SpecDecode, own encoders s | "
        "SpecDecode, encoded once s | once / own | tokens same |\n|---|---:|---:|---:|---:|---|")
  for task, (length, max_len) in LENGTHS.items():
    data = infer.load_task(task, "validation", args.examples, 0,
                           infer.checkpoint_vocabulary(args.verifier), length)
    xs = [x for x, _ in infer.one_at_a_time(data)]
    kws = {"verifier": dict(method="verifier"),
           "own": dict(method="spec_decode", share_encoder=False),
           "once": dict(method="spec_decode")}
    for kw in kws.values():
      kw.update(temperature=0.0, num_draft_tokens=args.gamma, max_decode_length=max_len)
    totals = {k: np.zeros(args.rounds) for k in kws}
    outs = {}
    for x in xs[:1]:  # compile
      for kw in kws.values():
        generate(drafter, verifier, x, **kw)
    for r in range(args.rounds):
      for i, x in enumerate(xs):
        for k in rng.permutation(list(kws)):
          o = generate(drafter, verifier, x, **kws[k])
          totals[k][r] += o.wall_s
          outs[(k, i)] = o.tokens
    same = all(np.array_equal(outs[("own", i)], outs[("once", i)]) for i in range(len(xs)))
    ok &= same
    med = {k: float(np.median(v)) for k, v in totals.items()}
    print(f"| {task} ({length}) | {med['verifier']:.3f} | {med['own']:.3f} | {med['once']:.3f} "
          f"| {med['once'] / med['own']:.3f} | {'yes' if same else 'NO'} |")
  print("\nPASS" if ok else "\nFAIL: sharing the encoder changed an output")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
