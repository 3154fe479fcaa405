"""The decode loops' data: specs (static), knobs (traced), counters, loop state and results."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp


Array = jax.Array
EOS_ID = 1
PAD_ID = 0
# seq_cascade's `Method.body`: two loops in sequence, run by `decode` / `decode_stream` itself.
TWO_PASS = "two_pass"


class Bundle(NamedTuple):
  """A model and its parameters: a `T5Model` or a `DecoderOnlyModel` (the engine reaches
  either through `decoding.contract`)."""
  model: Any
  params: Any


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Everything that fixes the compiled program (changing any of it recompiles).

  num_draft_tokens: γ, None where it does not apply (`Method.gamma` other than block): such
  methods then share one program whatever γ a caller passed."""
  method: str
  rule: str | None
  num_draft_tokens: int | None
  max_decode_length: int
  top_k: int = 0
  solve_beta: bool = True
  token_cascade_window: int = 8
  bild_max_window: int = 10
  shrink_batch: bool = True  # gather the active rows into smaller batches (`run_stages`)
  # Speculative methods: stop a row's drafting once the drafter's top probability falls below
  # Knobs.draft_confidence (a block proposes 1..γ drafts; drafter calls no row needs are skipped).
  dynamic_draft: bool = False
  # The token that ends a row (kept in the output): 1 for T5 and Gemma; a decoder-only
  # model's config says its own (`DecoderConfig.eos_id`, from Hugging Face's config.json).
  eos_id: int = EOS_ID
  # Rules compiled into one program (rule is then None): `Knobs.rule_index` picks one at run
  # time, so a sweep over these rules compiles once. Empty: `rule` alone.
  rule_set: tuple[str, ...] = ()
  # The drafter's encoder (and token embedding) is the verifier's (`contract.shares_encoder`,
  # e.g. a drafter cut from the verifier whose encoder stayed frozen): each input is encoded
  # once, by the verifier, and the drafter's cross-attention reads that output.
  shared_encoder: bool = False


@flax.struct.dataclass
class Knobs:
  """Traced scalars: changing them never recompiles (an α sweep compiles once)."""
  alpha: Array
  beta: Array
  temperature: Array
  top_p: Array
  fallback_threshold: Array
  rollback_threshold: Array
  draft_confidence: Array
  rule_index: Array  # int32: which rule of `DecodeSpec.rule_set` runs (0 without a set)


COUNTER_FIELDS = ("output_tokens", "drafter_steps", "verifier_calls", "verifier_sequential_calls",
                  "drafted", "accepted", "rejected", "deferred", "blocks", "bonus_tokens",
                  "residual_fallbacks")


@flax.struct.dataclass
class Counters:
  """Exact per-row counters, int32 [B] (deferred: float32, see docs/deferral_rules.md).

  output_tokens: committed tokens (EOS included). drafter_steps: drafter decode calls the
  row took part in. verifier_calls: verifier decode calls (block calls count once).
  verifier_sequential_calls: token_cascade deferrals (each a sequential verifier call).
  drafted / accepted / rejected: speculative drafts proposed, accepted, and blocks that ended
  in a rejection. deferred: Σ over emitted tokens of the rule's deferral weight (an integer
  count for indicator rules). blocks: draft blocks (or loop steps for autoregressive
  methods). bonus_tokens: blocks whose every draft was accepted. residual_fallbacks: rejections
  where the residual had ~0 mass and π was sampled instead.
  """
  output_tokens: Array
  drafter_steps: Array
  verifier_calls: Array
  verifier_sequential_calls: Array
  drafted: Array
  accepted: Array
  rejected: Array
  deferred: Array
  blocks: Array
  bonus_tokens: Array
  residual_fallbacks: Array

  @classmethod
  def zeros(cls, batch: int) -> "Counters":
    z = jnp.zeros((batch,), jnp.int32)
    return cls(**{f: (jnp.zeros((batch,), jnp.float32) if f == "deferred" else z)
                  for f in COUNTER_FIELDS})

  def add(self, active: Array, **incs) -> "Counters":
    """Adds increments ([B] or scalar) on active rows only."""
    new = {}
    for name, inc in incs.items():
      cur = getattr(self, name)
      new[name] = cur + jnp.where(active, jnp.asarray(inc).astype(cur.dtype), 0)
    return self.replace(**new)


@flax.struct.dataclass
class DecodeState:
  """The loop state shared by all methods.

  out: int32 [B, L + W] output buffer (W = widest block); length: int32 [B] committed tokens;
  done: bool [B]; caches: the two models' decoding state (`contract.start`; None if unused);
  verified: int32 [B] verifier-valid positions (token_cascade only); step: int32 loop
  iteration.
  """
  out: Array
  length: Array
  done: Array
  d_cache: Any
  v_cache: Any
  verified: Array
  counters: Counters
  step: Array
  aux: Array  # float32 [B]: per-method accumulator (seq_cascade: Σ log q of emitted tokens)


@flax.struct.dataclass
class DecodeResult:
  tokens: Array     # int32 [B, max_decode_length], 0 after EOS
  lengths: Array    # int32 [B]
  counters: Counters
  # int32 [B]: iterations of the loop that decoded each row (its device's own loop under a
  # data-parallel mesh): what a call costs, padding rows included.
  steps: Array


# ----------------------------------------------------------------------------------------------
# Small pure helpers
