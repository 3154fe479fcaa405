"""Decode loops for every method of docs/method.md §5, each one compiled `lax.while_loop`.

The package, in the order a call goes through it:
  api        generate(): checks inputs; a DecodeConfig (made once per operating point by
             the entry points, or from generate's keywords) holds the DecodeSpec (static)
             and Knobs (traced); pads to bucketed shapes, places on a mesh, runs the program
  loops      decode / decode_stream: the while loops over a batch or a stream, compiled once
             per (models, spec, shape) in the bounded program cache
  bodies     one loop body per kind of method (`BODIES`, keyed by `methods.Method.body`)
  contract   the model contract the bodies call: start / score / start_stream / refill, for T5 and
             decoder-only models alike
  ops        small pure helpers (keys, commit, draws); state: the dataclasses

Methods: the catalogue `spec_cascade.methods` (docs/methods.md) says what each is; this module
holds their loop bodies (`BODIES`, keyed by `Method.body`) and runs them:
  one_model              autoregressive decoding with one model (greedy / temperature / top-k / top-p)
  token_level            token_cascade, the sequential token-level cascade [Chow]: the verifier
                         runs only when a row defers (first catching its cache up over the
                         positions since the row's last deferral); a row is charged its own
                         calls only. oracle: both models every token, any rule (analysis only)
  two_pass               seq_cascade, sequence-level Chow: drafter output kept unless its
                         length-normalised confidence is below 1 − α; then the row is re-decoded
                         by the verifier (two loops, not a body: `decode`, `decode_stream`)
  draft_verify           spec_decode (toward p̃, rule `verifier`), spec_decode_lossy (toward the
                         `lossy` target), spec_cascade (toward any rule's target)
  draft_rollback         BiLD: greedy drafts while max q ≥ fallback threshold (≤ max window),
                         one verifier call, roll back at the first draft with
                         −log p(draft) > rollback threshold, emit the verifier's argmax there

Shared conventions. Output token t of a row sits at decoder position t + 1 (position 0 is
BOS = 0), so the decoder input at position n is the last committed token out[n − 1]. A row's
committed length n never exceeds `max_decode_length`; both caches hold valid keys/values for
positions < n (plus the drafter's extra positions, which are overwritten before being read),
except that SpecDecode's and BiLD's drafters may lack position n − 1 (SpecDecode skips the step
on a block's last draft, whose distribution its target never reads; BiLD's window ends on a draft
it never feeds back) and write it in the next block's first call, which takes two tokens.
A row finishes at its first EOS (kept in the output) or at max_decode_length; later positions
are 0. Every random draw of a row comes from fold_in(key(seed), example_id), then the row's
own step count, so a row's output does not depend on the batch it sits in, on when it entered
it (`decode_stream`) or on the device count.
A batch of ≥ 16 rows runs in two stages (`stage_sizes`, `loops.run_stages`): once at most a
quarter of its rows are still decoding, those rows (caches, keys and all) go on in a
quarter-size batch, so the tail waiting for the slowest rows does not pay for the finished ones.
`decode_stream` decodes N inputs through B rows (continuous batching): a finished row's slot
takes the next input in the same step; seq_cascade streams its drafter pass over all N, then
its verifier pass over the deferred inputs only.
"""
from spec_cascade import methods
from spec_cascade.decoding import api, bodies, contract, loops, ops, state
from spec_cascade.decoding.api import (DecodeConfig, GenerateOutput, eos_id_of, generate,
                                       make_knobs, make_spec, resolve_rule)
from spec_cascade.decoding.bodies import BODIES
from spec_cascade.decoding.loops import (compiled_decode, compiled_stream, decode,
                                         decode_stream, stage_sizes)
from spec_cascade.decoding.ops import argmax
from spec_cascade.decoding.state import (COUNTER_FIELDS, EOS_ID, PAD_ID, TWO_PASS, Bundle,
                                         Counters, DecodeResult, DecodeSpec, DecodeState, Knobs)

METHODS = methods.NAMES  # the engine's method names, for callers that list them

__all__ = ["BODIES", "COUNTER_FIELDS", "EOS_ID", "METHODS", "PAD_ID", "TWO_PASS", "Bundle",
           "Counters", "DecodeConfig", "DecodeResult", "DecodeSpec", "DecodeState",
           "GenerateOutput", "Knobs",
           "api", "argmax", "bodies", "compiled_decode", "compiled_stream", "contract", "decode",
           "decode_stream", "eos_id_of", "generate", "loops", "make_knobs", "make_spec", "ops",
           "resolve_rule", "stage_sizes", "state"]
