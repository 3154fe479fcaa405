"""Fingerprints of the engine's lowered T5 decode programs, to show a refactor changed no program.

    python bench/lowered_programs.py                      # this checkout
    PYTHONPATH=/path/to/other/checkout python bench/lowered_programs.py --tests /path/to/other/checkout/tests

Lowers `decoding.compiled_decode` for six methods (batch 4) and `decoding.compiled_stream`
for two (6 examples through 2 slots) on the synthetic test pair (tests/pairs.py, 16 new tokens)
and prints a hash of each program's StableHLO with source locations removed. Equal hashes across two checkouts mean XLA compiles the same program for both, so
speed and outputs are unchanged by construction (bench/RESULTS.md, session 10).
"""
import argparse
import hashlib
import os
import re
import sys

METHODS = [("verifier", None, None), ("spec_decode", None, 3), ("spec_cascade", "token_v3", 3),
           ("token_cascade", None, None), ("bild", None, 3), ("seq_cascade", None, None)]
STREAMED = ("spec_decode", "seq_cascade")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  here = os.path.dirname(os.path.abspath(__file__))
  parser.add_argument("--tests", default=os.path.join(here, "..", "tests"),
                      help="the tests/ folder whose pairs.py builds the pair")
  args = parser.parse_args()
  sys.path.insert(0, args.tests)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from pairs import make_pair, random_inputs  # pylint: disable=import-outside-toplevel
  from spec_cascade import decoding  # pylint: disable=import-outside-toplevel
  drafter, verifier = make_pair()
  x, ids = jnp.asarray(random_inputs(4)), jnp.arange(4, dtype=jnp.int32)
  x6, ids6 = jnp.asarray(random_inputs(6)), jnp.arange(6, dtype=jnp.int32)
  print(f"# {decoding.__file__}")
  for method, rule, gamma in METHODS:
    spec = decoding.make_spec(method, rule, num_draft_tokens=gamma or 5, max_decode_length=16)
    lenient = rule is not None or method in ("token_cascade", "seq_cascade")
    knobs = decoding.make_knobs(spec, alpha=0.3 if lenient else 0.0)
    fn = decoding.compiled_decode(drafter.model.config, verifier.model.config, spec)
    _show(method, fn.lower(drafter.params, verifier.params, x, ids, jnp.int32(0), knobs))
    if method in STREAMED:
      fn = decoding.compiled_stream(drafter.model.config, verifier.model.config, spec, 2)
      _show(f"{method} stream", fn.lower(drafter.params, verifier.params, x6, ids6,
                                         jnp.int32(0), knobs))
  return 0


def _show(name: str, lowered) -> None:
  text = lowered.as_text()
  text = re.sub(r"#loc\d*( = .*)?", "", re.sub(r"loc\([^)]*\)", "", text))
  text = re.sub(r" +\n", "\n", text)
  print(f"{name:20s} {hashlib.sha256(text.encode()).hexdigest()[:16]} ({len(text)} chars)")


if __name__ == "__main__":
  sys.exit(main())
