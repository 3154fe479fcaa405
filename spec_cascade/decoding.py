"""Decode loops for every method of docs/method.md §5, each one compiled `lax.while_loop`.

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
A batch of ≥ 16 rows runs in two stages (`stage_sizes`, `_run`): once at most a quarter of its
rows are still decoding, those rows (caches, keys and all) go on in a quarter-size batch, so
the tail waiting for the slowest rows does not pay for the finished ones.
`decode_stream` decodes N inputs through B rows (continuous batching): a finished row's slot
takes the next input in the same step; seq_cascade streams its drafter pass over all N, then
its verifier pass over the deferred inputs only.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade import autogamma, deferral, methods, parallel, pod, programs, sampling
from spec_cascade.models.configs import T5Config
from spec_cascade.models.t5 import DecoderCache, T5Model

Array = jax.Array
EOS_ID = 1
PAD_ID = 0

METHODS = methods.NAMES  # the engine's method names, for callers that list them
# seq_cascade's `Method.body`: two loops in sequence, run by `decode` / `decode_stream` itself.
TWO_PASS = "two_pass"


class Bundle(NamedTuple):
  """A model and its parameters."""
  model: T5Model
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
  shrink_batch: bool = True  # gather the active rows into smaller batches (`_run`)
  # Speculative methods: stop a row's drafting once the drafter's top probability falls below
  # Knobs.draft_confidence (a block proposes 1..γ drafts; drafter calls no row needs are skipped).
  dynamic_draft: bool = False


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
  done: bool [B]; caches: the two models' DecoderCache (None if unused); verified: int32 [B]
  verifier-valid positions (token_cascade only); step: int32 loop iteration.
  """
  out: Array
  length: Array
  done: Array
  d_cache: DecoderCache | None
  v_cache: DecoderCache | None
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

def _row_keys(seed: Array, example_ids: Array) -> Array:
  """[B] typed keys: fold_in(key(seed), example_id)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids)


def _step_keys(row_keys: Array, steps: Array, num: int) -> Array:
  """[num, B] keys for each row's step `steps` [B] (its own count of loop steps, so a row's
  draws do not depend on when it entered the batch)."""
  keys = jax.vmap(lambda k, s: jax.random.split(jax.random.fold_in(k, s), num))(row_keys, steps)
  return jnp.swapaxes(keys, 0, 1)


def _last_input(out: Array, length: Array) -> Array:
  """Decoder input at position `length`: out[length − 1], or BOS (0) when length = 0."""
  prev = jnp.take_along_axis(out, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
  return jnp.where(length > 0, prev, PAD_ID)


def _commit(state: DecodeState, tokens: Array, num_new: Array, max_len: int):
  """Appends tokens[:, :num_new] to active rows, cutting at the first EOS and at max_len.

  tokens: int32 [B, K]; num_new: int32 [B] in 1..K. Returns (out, length, done, committed).
  """
  k = tokens.shape[1]
  active = ~state.done
  pos = jnp.arange(k)[None, :]
  is_eos = (tokens == EOS_ID) & (pos < num_new[:, None])
  first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, k + 1)
  n = jnp.minimum(jnp.minimum(num_new, first_eos), max_len - state.length)
  n = jnp.where(active, n, 0)
  masked = jnp.where(pos < n[:, None], tokens, PAD_ID).astype(jnp.int32)
  # Slots at and after `length` are still zero (nothing is written past the committed
  # length), so writing the zero-padded block keeps the buffer's tail zero.
  write = jax.vmap(lambda o, t, s: jax.lax.dynamic_update_slice(o, t, (s,)))
  out = jnp.where(active[:, None], write(state.out, masked, state.length), state.out)
  length = state.length + n
  done = state.done | (active & ((first_eos <= n) | (length >= max_len)))
  return out, length, done, n


def decode_call(role: str, bundle: Bundle, cache, tokens: Array, offsets: Array):
  """bundle.model.decode_block under a named scope, so profiles (bench/profile_decode.py)
  attribute each op to the drafter or the verifier."""
  with jax.named_scope(role):
    return bundle.model.decode_block(bundle.params, cache, tokens, offsets)


def _greedy(knobs: Knobs) -> Array:
  """bool []: every row decodes greedily (T = 0), so no random draw is needed."""
  return jnp.all(knobs.temperature <= 0.0)


def _argmax(logits: Array, chunk: int = 64) -> Array:
  """First index of the maximum over the last axis: [..., V] → int32 [...].

  Equals jnp.argmax (and a draw at T = 0) for NaN-free logits, ties included; a row of NaNs
  gives index 0. On CPU, XLA's (value, index) argmax reduce took 0.9 ms for
  [32, 4224], and a max followed by a masked min over the whole row still 0.12 ms (the
  masked pass does not vectorise); this takes the max of each `chunk` of the row (a plain
  reduction), finds the first chunk holding the row's maximum, then the first index inside
  that one chunk: 0.035 / 0.064 / 0.087 ms for [8 / 32 / 48, 4224] instead of 0.038 / 0.109 /
  0.151 (bench/micro_ops.py, bench/RESULTS.md).
  """
  vocab = logits.shape[-1]
  pad = (-vocab) % chunk
  if pad:
    logits = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, pad)],
                     constant_values=-jnp.inf)
  chunks = logits.reshape(logits.shape[:-1] + (-1, chunk))        # [..., C, chunk]
  chunk_max = jnp.max(chunks, axis=-1)                            # [..., C]
  top = jnp.max(chunk_max, axis=-1, keepdims=True)                # [..., 1]
  num = chunk_max.shape[-1]

  def first(x, n):
    """First position along the last axis where x == top (n if none: a NaN row)."""
    hit = jnp.where(x == top, jnp.arange(n, dtype=jnp.float32), float(n))
    return jnp.min(hit, axis=-1).astype(jnp.int32)

  c = first(chunk_max, num)
  inside = jnp.take_along_axis(chunks, jnp.minimum(c, num - 1)[..., None, None], axis=-2)
  j = first(inside[..., 0, :], chunk)
  index = c * chunk + j
  # No hit (NaNs: XLA's max may skip or keep them) → 0, like the documented NaN row.
  return jnp.where((j < chunk) & (index < vocab), index, 0)


def _vsample(keys, logits: Array, knobs: Knobs, top_k: int) -> Array:
  """Per-row draws: keys () → [B] (a function, so keys are derived only when sampling),
  logits [B, V] → int32 [B].

  At T = 0 a draw is exactly argmax(logits) (sampling.sample's one-hot), so a runtime cond
  skips the softmax, the [B, V] Gumbel noise and the key derivation (threefry is the
  costliest part of a greedy step on CPU). Temperature stays traced: nothing recompiles.
  """
  def draw():
    return jax.vmap(lambda k, l: sampling.sample(k, l, knobs.temperature, top_k, knobs.top_p))(
        keys(), logits)
  with jax.named_scope("sample"):
    return jax.lax.cond(_greedy(knobs), lambda: _argmax(logits), draw)


# ----------------------------------------------------------------------------------------------
# Loop bodies. Each maps DecodeState → DecodeState for one step of its method.

def _autoregressive_body(model: T5Model, params, which: str, spec: DecodeSpec, knobs: Knobs,
                         row_keys: Array, track_logq: bool = False):
  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n = state.length
    x = _last_input(state.out, n)
    cache = state.d_cache if which == "drafter" else state.v_cache
    logits, cache = decode_call(which, Bundle(model, params), cache, x[:, None], n)
    keys = lambda: _step_keys(row_keys, state.counters.blocks, 1)[0]
    tok = _vsample(keys, logits[:, 0], knobs, spec.top_k)
    out, length, done, _ = _commit(state, tok[:, None], jnp.ones_like(n), spec.max_decode_length)
    counters = state.counters.add(active, blocks=1, **{
        ("drafter_steps" if which == "drafter" else "verifier_calls"): 1})
    aux = state.aux
    if track_logq:
      logq = jax.nn.log_softmax(logits[:, 0])
      aux = aux + jnp.where(active, jnp.take_along_axis(logq, tok[:, None], 1)[:, 0], 0.0)
    new = state.replace(out=out, length=length, done=done, counters=counters, aux=aux,
                        step=state.step + 1)
    return new.replace(d_cache=cache) if which == "drafter" else new.replace(v_cache=cache)
  return body


def _speculative_body(drafter: Bundle, verifier: Bundle, spec: DecodeSpec, knobs: Knobs,
                      row_keys: Array):
  gamma = spec.num_draft_tokens
  rule = deferral.get_rule(spec.rule)
  # SpecDecode's target is p̃ at every position, so q_γ (the drafter's distribution after
  # the last draft) is never read: skip that drafter step and let the next block's first
  # drafter call take two tokens instead (γ drafter calls per block, not γ + 1).
  lazy_last = spec.rule == "verifier"

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n = state.length
    x0 = _last_input(state.out, n)
    # Derived inside the sampling branches only (greedy decoding never needs them).
    keys = lambda: _step_keys(row_keys, state.counters.blocks, gamma + 2)

    def draft(j, cache, tok):
      logits, cache = decode_call("drafter", drafter, cache, tok[:, None], n + j)
      return logits[:, 0], _vsample(lambda: keys()[j], logits[:, 0], knobs, spec.top_k), cache

    # Drafting is unrolled in Python: a nested while loop (lax.scan) inside the decode loop cost
    # ~4x the drafter's compute per block on CPU (bench/RESULTS.md). The drafter's logits stay
    # a list: only the sampling verification stacks them (inside its branch of the cond below),
    # so greedy SpecDecode never copies them into a [B, γ+1, V] array.
    # Dynamic draft length: a row proposes drafts while the drafter's top probability stays at
    # or above the threshold (the draft where it falls below is the row's last); a drafter call
    # no active row needs is skipped. Which drafts a row proposes depends on the drafter alone,
    # so every emitted token still follows the target exactly.
    dynamic = spec.dynamic_draft
    proposing = active
    num_proposed = jnp.zeros_like(n)

    def propose(q, proposing, num_proposed):
      if not dynamic:
        return proposing, num_proposed
      confident = jnp.max(jax.nn.softmax(q, axis=-1), axis=-1) >= knobs.draft_confidence
      return proposing & confident, num_proposed + proposing.astype(jnp.int32)

    def maybe_draft(j, cache, tok, need):
      if not dynamic:
        return draft(j, cache, tok)
      def skip(c):
        return jnp.zeros((tok.shape[0], vocab), jnp.float32), jnp.zeros_like(tok), c
      return jax.lax.cond(jnp.any(need), lambda c: draft(j, c, tok), skip, cache)

    vocab = verifier.model.config.vocab_size
    if lazy_last:
      # The first call also writes position n − 1 (input out[n − 2]): the previous block
      # skipped the step on its last draft, whose cache entry is missing when that draft was
      # accepted (and rewritten unchanged otherwise). At n = 0 it writes BOS at 0 and a
      # throw-away entry at 1 that the next step overwrites.
      start = jnp.maximum(n - 1, 0)
      prev = _last_input(state.out, start)
      logits2, d_cache = decode_call("drafter", drafter, state.d_cache,
                                     jnp.stack([prev, x0], axis=1), start)
      q0 = jnp.where((n > 0)[:, None], logits2[:, 1], logits2[:, 0])
      q_list = [q0]
      draft_list = [_vsample(lambda: keys()[0], q0, knobs, spec.top_k)]
      proposing, num_proposed = propose(q0, proposing, num_proposed)
      for j in range(1, gamma):
        # SpecDecode needs q_j only to draw draft j.
        q, d, d_cache = maybe_draft(j, d_cache, draft_list[-1], proposing)
        q_list.append(q)
        draft_list.append(d)
        proposing, num_proposed = propose(q, proposing, num_proposed)
      q_list.append(jnp.zeros_like(q0))  # q_γ is never read (SpecDecode's target is p̃)
    else:
      # γ drafts plus one more drafter step on the last draft: π_γ needs q_γ (with a dynamic
      # length, π at the position after a row's last proposed draft needs q there).
      d_cache, tok = state.d_cache, x0
      q_list, draft_list = [], []
      for j in range(gamma + 1):
        need = proposing | (num_proposed == j) if j < gamma else num_proposed == gamma
        q, tok, d_cache = (draft(j, d_cache, tok) if j == 0
                           else maybe_draft(j, d_cache, tok, need & active))
        q_list.append(q)
        draft_list.append(tok)
        if j < gamma:
          proposing, num_proposed = propose(q, proposing, num_proposed)
      draft_list = draft_list[:gamma]
    if not dynamic:
      num_proposed = jnp.full_like(n, gamma)
    drafts = jnp.stack(draft_list, axis=1)  # [B, γ]
    v_tokens = jnp.concatenate([x0[:, None], drafts], axis=1)
    v_logits, v_cache = decode_call("verifier", verifier, state.v_cache, v_tokens, n)

    def verify():
      d_logits = jnp.stack(q_list, axis=1)  # [B, γ+1, V] (q_γ zeros if lazy_last)
      probs = deferral.rule_inputs(d_logits, v_logits, knobs.temperature, spec.top_k,
                                   knobs.top_p)
      beta = None if spec.solve_beta else knobs.beta
      pi, defer = rule.fn(probs.q_scaled, probs.p_scaled, probs.q, probs.p, knobs.alpha, beta)
      res = sampling.verify_with_target(keys()[gamma + 1], drafts, probs.q_scaled, pi, defer,
                                        num_proposed if dynamic else None)
      return (res.tokens, res.num_emitted, res.num_accepted, res.rejected, res.is_bonus,
              res.residual_fallback, res.defer_weight)

    def greedy_block(ok, best):
      """Committed tokens when draft j is accepted iff ok[:, j] (and proposed), the token
      after the accepted prefix being best (argmax p [B, γ+1]) there. Returns the verdict
      fields but defer_weight, and the accepted count."""
      proposed = jnp.arange(gamma)[None, :] < num_proposed[:, None]
      accepted = jnp.cumprod((ok & proposed).astype(jnp.int32), axis=1)
      num_accepted = jnp.sum(accepted, axis=1, dtype=jnp.int32)
      nxt = jnp.take_along_axis(best, num_accepted[:, None], axis=1)
      pos = jnp.arange(gamma + 1)[None, :]
      padded = jnp.pad(drafts, ((0, 0), (0, 1)))
      tokens = jnp.where(pos < num_accepted[:, None], padded,
                         jnp.where(pos == num_accepted[:, None], nxt, 0)).astype(jnp.int32)
      rejected = num_accepted < num_proposed
      return (tokens, num_accepted + 1, num_accepted, rejected, ~rejected,
              jnp.zeros_like(rejected)), num_accepted

    def verify_greedy():
      # Greedy SpecDecode (π = p̃ = one-hot argmax p, drafts = argmax q): a draft is
      # accepted iff it equals argmax p, and the token after the accepted prefix (residual
      # at a rejection, bonus otherwise) is argmax p there. Same result as `verify`
      # without the [B, γ+1, V] softmaxes and the Gumbel draw.
      best = _argmax(v_logits)  # [B, γ+1]
      verdict, _ = greedy_block(drafts == best[:, :gamma], best)
      return verdict + (jnp.ones(best.shape, jnp.float32),)

    def verify_lenient_greedy():
      # Lossy SpecDecode at T = 0 (Leviathan et al.'s lenient greedy acceptance): a greedy
      # draft x is accepted iff p(x) ≥ (1 − α)·max p under the verifier's untempered p, and
      # the token after the accepted prefix is argmax p. α = 0 is greedy SpecDecode; the
      # temperature-scaled lossy target would be one-hot at T = 0 and ignore α.
      logp = jax.nn.log_softmax(v_logits[:, :gamma].astype(jnp.float32), axis=-1)
      best = _argmax(v_logits)  # [B, γ+1]
      top = jnp.max(logp, axis=-1)
      mine = jnp.take_along_axis(logp, drafts[..., None], axis=-1)[..., 0]
      lenient = mine >= top + jnp.log1p(-jnp.minimum(knobs.alpha, 1.0))[..., None]
      verdict, num_accepted = greedy_block(lenient, best)
      # Deferred: the tokens the verifier chose (its argmax), not a lenient drafter token.
      own = jnp.pad((drafts != best[:, :gamma]).astype(jnp.float32), ((0, 0), (0, 1)))
      pos = jnp.arange(gamma + 1)[None, :]
      return verdict + (jnp.where(pos < num_accepted[:, None], 1.0 - own, 1.0),)

    with jax.named_scope("verify"):
      if spec.rule == "verifier":
        verdict = jax.lax.cond(_greedy(knobs), verify_greedy, verify)
      elif spec.method == "spec_decode_lossy":
        verdict = jax.lax.cond(_greedy(knobs), verify_lenient_greedy, verify)
      else:
        verdict = verify()
    tokens, num_emitted, num_accepted, rejected, is_bonus, fallback, defer_weight = verdict

    with jax.named_scope("commit"):
      out, length, done, n_new = _commit(state, tokens, num_emitted, spec.max_decode_length)
    emitted = jnp.arange(gamma + 1)[None, :] < n_new[:, None]
    # A row is charged the drafter calls it needed (those a batch-mate alone needed are not
    # its cost), and its proposed drafts.
    counters = state.counters.add(
        active, drafter_steps=num_proposed if lazy_last else num_proposed + 1,
        verifier_calls=1, drafted=num_proposed,
        accepted=num_accepted, rejected=rejected, blocks=1, bonus_tokens=is_bonus,
        residual_fallbacks=fallback,
        deferred=jnp.sum(jnp.where(emitted, defer_weight, 0.0), axis=1))
    return state.replace(out=out, length=length, done=done, d_cache=d_cache, v_cache=v_cache,
                         counters=counters, step=state.step + 1)
  return body


def _token_cascade_body(drafter: Bundle, verifier: Bundle, spec: DecodeSpec, knobs: Knobs,
                        row_keys: Array, oracle: bool):
  """One token per step from π = rule(q, p). The oracle calls the verifier every step; the
  sequential cascade only when some row defers (Chow decides from q alone). The verifier's
  cache is brought up to a deferring row's position then: one call scores a window of
  `token_cascade_window` positions from the row's first unverified one, after as many
  catch-up windows as the row lags behind (a prefill, made only when a row defers).
  A row is charged the calls it needed, not those a batch-mate needed."""
  window = 1 if oracle else spec.token_cascade_window
  rule = deferral.get_rule(spec.rule)
  vocab = verifier.model.config.vocab_size

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n, m = state.length, state.verified
    x = _last_input(state.out, n)
    keys = _step_keys(row_keys, state.counters.blocks, 1)[0]
    d_logits, d_cache = decode_call("drafter", drafter, state.d_cache, x[:, None], n)
    d_logits = d_logits[:, 0]
    if oracle:
      need = active
    else:
      # Chow: defer iff max q < 1 − α (the decision reads unscaled q only).
      need = active & (jnp.max(jax.nn.softmax(d_logits), axis=-1) < 1.0 - knobs.alpha)
    call = jnp.any(need)

    def window_call(v_cache, start):
      """The verifier over each row's window of inputs at positions start .. start + W − 1
      (positions past a row's length get placeholders, overwritten before they are read)."""
      pos = start[:, None] + jnp.arange(window)[None, :]
      prev = jnp.take_along_axis(state.out, jnp.clip(pos - 1, 0, state.out.shape[1] - 1), axis=1)
      toks = jnp.where(pos > 0, prev, PAD_ID)
      return decode_call("verifier", verifier, v_cache, toks, start)

    def verify(v_cache):
      lagging = lambda start: need & (n - start >= window)

      def catch_up(c):
        start, v_cache, calls = c
        _, v_cache = window_call(v_cache, start)
        behind = lagging(start)
        return (jnp.where(behind, start + window, start), v_cache,
                calls + behind.astype(jnp.int32))

      start, v_cache, calls = jax.lax.while_loop(
          lambda c: jnp.any(lagging(c[0])), catch_up, (m, v_cache, jnp.zeros_like(n)))
      logits, v_cache = window_call(v_cache, start)
      at_n = jnp.take_along_axis(logits, (n - start)[:, None, None], axis=1)[:, 0]
      return at_n, v_cache, calls + need.astype(jnp.int32)

    def skip(v_cache):
      return jnp.zeros((n.shape[0], vocab), jnp.float32), v_cache, jnp.zeros_like(n)

    v_logits, v_cache, row_calls = jax.lax.cond(call, verify, skip, state.v_cache)
    probs = deferral.rule_inputs(d_logits, v_logits, knobs.temperature, spec.top_k, knobs.top_p)
    beta = None if spec.solve_beta else knobs.beta
    pi, defer = rule.fn(probs.q_scaled, probs.p_scaled, probs.q, probs.p, knobs.alpha, beta)
    tok = jax.vmap(sampling.categorical)(keys, pi)
    out, length, done, n_new = _commit(state, tok[:, None], jnp.ones_like(n),
                                       spec.max_decode_length)
    counters = state.counters.add(
        active, drafter_steps=1, verifier_calls=row_calls,
        verifier_sequential_calls=need.astype(jnp.int32), blocks=1,
        deferred=jnp.where(n_new > 0, defer, 0.0))
    # A deferring row's cache now holds every position up to n; others keep their m.
    verified = jnp.where(need, n + 1, m)
    return state.replace(out=out, length=length, done=done, d_cache=d_cache, v_cache=v_cache,
                         verified=verified, counters=counters, step=state.step + 1)
  return body


def _bild_body(drafter: Bundle, verifier: Bundle, spec: DecodeSpec, knobs: Knobs):
  wmax = spec.bild_max_window

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n = state.length
    batch = n.shape[0]
    x0 = _last_input(state.out, n)

    # Greedy drafts while the drafter is confident (max q ≥ fallback) and the window has room.
    def cond(c):
      j, _, _, drafting, _, _, _ = c
      return (j < wmax) & jnp.any(drafting)

    def take(j, logits, c):
      """Carry c after the drafter's logits [B, V] at draft step j."""
      _, cache, _, drafting, drafts, steps, width = c
      probs = jax.nn.softmax(logits)
      nxt = jnp.argmax(probs, axis=-1).astype(jnp.int32)
      keep = drafting & (jnp.max(probs, axis=-1) >= knobs.fallback_threshold)
      drafts = drafts.at[:, j].set(jnp.where(keep, nxt, 0))
      return (j + 1, cache, nxt, keep, drafts, steps + drafting.astype(jnp.int32),
              width + keep.astype(jnp.int32))

    def draft(c):
      j, cache, tok = c[:3]
      logits, cache = decode_call("drafter", drafter, cache, tok[:, None], n + j)
      return take(j, logits[:, 0], (j, cache) + c[2:])

    # The first call also writes position n − 1 (input out[n − 2]): when the previous block
    # kept and accepted its whole window, its last draft was never fed to the drafter, so
    # that cache entry is missing (otherwise it is rewritten unchanged). At n = 0 it writes
    # BOS at 0 and a throw-away entry at 1 that the next call overwrites.
    start = jnp.maximum(n - 1, 0)
    prev = _last_input(state.out, start)
    logits2, d_cache = decode_call("drafter", drafter, state.d_cache,
                                   jnp.stack([prev, x0], axis=1), start)
    q0 = jnp.where((n > 0)[:, None], logits2[:, 1], logits2[:, 0])
    zeros = jnp.zeros((batch,), jnp.int32)
    first = take(0, q0, (jnp.int32(0), d_cache, x0, active,
                         jnp.zeros((batch, wmax), jnp.int32), zeros, zeros))
    # Kept drafts are contiguous from 0 (a row stops drafting at its first unsure step).
    _, d_cache, _, _, drafts, steps, width = jax.lax.while_loop(cond, draft, first)
    v_tokens = jnp.concatenate([x0[:, None], drafts], axis=1)
    v_logits, v_cache = decode_call("verifier", verifier, state.v_cache, v_tokens, n)
    logp = jax.nn.log_softmax(v_logits[:, :wmax])
    nll = -jnp.take_along_axis(logp, drafts[..., None], axis=-1)[..., 0]
    pos = jnp.arange(wmax)[None, :]
    bad = (pos < width[:, None]) & (nll > knobs.rollback_threshold)
    accepted = jnp.where(bad.any(axis=1), jnp.argmax(bad, axis=1), width).astype(jnp.int32)
    nxt = jnp.argmax(jnp.take_along_axis(v_logits, accepted[:, None, None], axis=1)[:, 0],
                     axis=-1).astype(jnp.int32)
    full = jnp.arange(wmax + 1)[None, :]
    padded = jnp.pad(drafts, ((0, 0), (0, 1)))
    tokens = jnp.where(full < accepted[:, None], padded,
                       jnp.where(full == accepted[:, None], nxt[:, None], 0))
    out, length, done, n_new = _commit(state, tokens, accepted + 1, spec.max_decode_length)
    rolled_back = accepted < width
    counters = state.counters.add(
        active, drafter_steps=steps, verifier_calls=1, drafted=width, accepted=accepted,
        rejected=rolled_back, blocks=1, bonus_tokens=(~rolled_back) & (width == wmax),
        deferred=(n_new > accepted).astype(jnp.float32))
    return state.replace(out=out, length=length, done=done, d_cache=d_cache, v_cache=v_cache,
                         counters=counters, step=state.step + 1)
  return body


# ----------------------------------------------------------------------------------------------
# The compiled program

def _one_model_body(method: methods.Method, spec: DecodeSpec, drafter: Bundle | None,
                    verifier: Bundle | None, knobs: Knobs):
  which = "drafter" if method.uses_drafter else "verifier"
  b = drafter if method.uses_drafter else verifier
  return lambda keys: _autoregressive_body(b.model, b.params, which, spec, knobs, keys)


def _token_level_body(method: methods.Method, spec: DecodeSpec, drafter: Bundle,
                      verifier: Bundle, knobs: Knobs):
  return lambda keys: _token_cascade_body(drafter, verifier, spec, knobs, keys,
                                          oracle=method.analysis_only)


def _draft_verify_body(method: methods.Method, spec: DecodeSpec, drafter: Bundle,
                       verifier: Bundle, knobs: Knobs):
  del method  # the rule in `spec` sets the target
  return lambda keys: _speculative_body(drafter, verifier, spec, knobs, keys)


def _draft_rollback_body(method: methods.Method, spec: DecodeSpec, drafter: Bundle,
                         verifier: Bundle, knobs: Knobs):
  del method  # greedy: BiLD draws nothing, so it needs no row keys
  return lambda _: _bild_body(drafter, verifier, spec, knobs)


# `Method.body` → factory(method, spec, drafter, verifier, knobs) → make_body(row_keys [B]) →
# the loop body of a one-loop method. A new method's body goes here (docs/methods.md).
BODIES = {"one_model": _one_model_body, "token_level": _token_level_body,
          "draft_verify": _draft_verify_body, "draft_rollback": _draft_rollback_body}


def _make_body(spec: DecodeSpec, drafter: Bundle | None, verifier: Bundle | None,
               knobs: Knobs):
  """make_body(row_keys [B]) → the loop body of a one-loop method (all but two-pass ones)."""
  method = methods.get(spec.method)
  return BODIES[method.body](method, spec, drafter, verifier, knobs)


def _init_state(batch: int, buf_len: int, d_cache, v_cache, done=None) -> DecodeState:
  return DecodeState(
      out=jnp.zeros((batch, buf_len), jnp.int32), length=jnp.zeros((batch,), jnp.int32),
      done=jnp.zeros((batch,), bool) if done is None else done, d_cache=d_cache,
      v_cache=v_cache, verified=jnp.zeros((batch,), jnp.int32), counters=Counters.zeros(batch),
      step=jnp.int32(0), aux=jnp.zeros((batch,), jnp.float32))


def stage_sizes(batch: int, shrink: bool) -> tuple[int, ...]:
  """Batch sizes of the decode loop's stages: (B,), or (B, B // 4) when shrinking and B ≥ 16.

  Each stage is its own while loop (a copy of the body in the program), so compilation takes
  twice as long (SpecDecode at batch 8: 4.5 → 9.5 s) and one shrink only. On the 2-core CPU
  with the synthetic pair (greedy SpecDecode, γ 5), batch 32: (32, 8) 1.09× faster, (32, 16)
  1.08×, (32, 16, 8) 1.09×; batch 8: (8, 2) 1.06×, (8, 4) 1.03× — not worth doubling the
  compile time below 16 rows (bench/RESULTS.md).
  """
  return (batch, batch // 4) if shrink and batch >= 16 else (batch,)


def _run(make_body, state: DecodeState, row_keys: Array, sizes: tuple[int, ...],
         started: bool = False) -> DecodeState:
  """Runs make_body(row_keys) until every row is done, shrinking the batch between stages.

  A lockstep loop runs until its slowest row is done, and finished rows still go through
  every model call. Once at most sizes[i+1] rows are active, the active rows are gathered
  (caches included) into a batch of sizes[i+1] and the loop goes on with that; finished rows
  keep their results in the returned full-size state. Per-row results are unchanged (a row's
  keys move with it and its draws follow its own step count), up to float rounding: a matmul
  over fewer rows may round differently in the last bit.
  started: the first stage has already run elsewhere (a stream's tail, `decode_stream`).
  Returns the state with every row at its original index (caches: the first stage's).
  """
  leaves = sizes[1:] + (0,)  # each stage runs while more rows than this are active
  loop = lambda s, keys, leave: jax.lax.while_loop(lambda s: jnp.sum(~s.done) > leave,
                                                   make_body(keys), s)
  full = state = state if started else loop(state, row_keys, leaves[0])
  rows = jnp.arange(sizes[0])  # each row of `state`: its index in `full`
  per_row = lambda s: s.replace(step=None, d_cache=None, v_cache=None)
  for size, leave in zip(sizes[1:], leaves[1:]):
    # Active rows first, in their order; the stage keeps `size` rows (≥ the active ones).
    keep = jnp.argsort(state.done, stable=True)[:size]
    rows, row_keys = rows[keep], row_keys[keep]
    state = loop(jax.tree_util.tree_map(lambda x: x[keep], state.replace(step=None)).replace(
        step=state.step), row_keys, leave)
    full = jax.tree_util.tree_map(lambda f, p: f.at[rows].set(p), per_row(full),
                                  per_row(state)).replace(step=state.step,
                                                          d_cache=full.d_cache,
                                                          v_cache=full.v_cache)
  return full


def _lengths(spec: DecodeSpec) -> tuple[int, int]:
  """(cache length, output buffer length): room for max_decode_length plus the widest block
  (a block may run past the last position before EOS / the cap cuts it)."""
  width = methods.get(spec.method).width(spec)
  return spec.max_decode_length + width + 1, spec.max_decode_length + width


def _bundles(d_model: T5Model | None, v_model: T5Model | None, d_params, v_params):
  """(drafter, verifier) Bundles, None where a model is not given."""
  return (Bundle(d_model, d_params) if d_model is not None else None,
          Bundle(v_model, v_params) if v_model is not None else None)


def _encode(b: Bundle, which: str, inputs: Array) -> tuple[Array, Array]:
  """b's encoder over inputs [B, S] under the `encode_<which>` scope (bench/profile_decode.py
  attributes time by these scopes) → (encoded [B, S, d], mask [B, S])."""
  with jax.named_scope(f"encode_{which}"):
    return b.model.encode(b.params, inputs)


# seq_cascade: the drafter decodes every row; rows whose length-normalised confidence
# exp(Σ log q / length) is below 1 − α are decoded again by the verifier.

def _seq_first_body(spec: DecodeSpec, drafter: Bundle, knobs: Knobs):
  return lambda keys: _autoregressive_body(drafter.model, drafter.params, "drafter", spec,
                                           knobs, keys, track_logq=True)


def _seq_second_body(spec: DecodeSpec, verifier: Bundle, knobs: Knobs):
  return lambda keys: _autoregressive_body(verifier.model, verifier.params, "verifier", spec,
                                           knobs, keys)


def _seq_second_keys(row_keys: Array) -> Array:
  """The verifier pass's keys [B]: its own stream per row, apart from the drafter pass's."""
  return jax.vmap(lambda k: jax.random.fold_in(k, 1))(row_keys)


def _seq_defer(logq_sum: Array, length: Array, knobs: Knobs) -> Array:
  """bool [B]: rows the verifier decodes again (Chow on the sequence's mean log q)."""
  return jnp.exp(logq_sum / jnp.maximum(length, 1)) < 1.0 - knobs.alpha


def _seq_merge(defer: Array, first, second):
  """(out, length, counters) of seq_cascade from its two passes' (out, length, counters):
  a deferred row's tokens are the verifier's, and its counters add both passes' work."""
  (o1, n1, c1), (o2, n2, c2) = first, second
  counters = c1.replace(
      verifier_calls=c2.verifier_calls, blocks=c1.blocks + c2.blocks,
      deferred=jnp.where(defer, n2, 0).astype(jnp.float32))
  return jnp.where(defer[:, None], o2, o1), jnp.where(defer, n2, n1), counters


def decode(d_model: T5Model | None, v_model: T5Model | None, spec: DecodeSpec, d_params,
           v_params, inputs: Array, example_ids: Array, seed: Array, knobs: Knobs
           ) -> DecodeResult:
  """Decodes a batch with `spec.method`. Pure; jit it with `spec` and the models static.

  inputs: int32 [B, S] encoder tokens (0 = padding); example_ids: int32 [B] (−1: a padding
  row, finished from the start); seed: int32 [].
  Returns DecodeResult with tokens [B, max_decode_length].
  """
  batch = inputs.shape[0]
  max_len = spec.max_decode_length
  cache_len, buf_len = _lengths(spec)
  row_keys = _row_keys(seed, example_ids)
  sizes = stage_sizes(batch, spec.shrink_batch)
  drafter, verifier = _bundles(d_model, v_model, d_params, v_params)

  def fresh_cache(b: Bundle | None):
    if b is None:
      return None
    encoded, mask = _encode(b, "drafter" if b is drafter else "verifier", inputs)
    return b.model.init_cache(b.params, encoded, mask, cache_len)

  method = methods.get(spec.method)
  padding = example_ids < 0  # rows the API added to reach a bucketed shape: never decoded
  if method.body != TWO_PASS:
    state = _init_state(batch, buf_len,
                        fresh_cache(drafter) if method.uses_drafter else None,
                        fresh_cache(verifier) if method.uses_verifier else None,
                        done=padding)
    state = _run(_make_body(spec, drafter, verifier, knobs), state, row_keys, sizes)
  else:
    first = _init_state(batch, buf_len, fresh_cache(drafter), None, done=padding)
    first = _run(_seq_first_body(spec, drafter, knobs), first, row_keys, sizes)
    defer = _seq_defer(first.aux, first.length, knobs) & ~padding
    second = _init_state(batch, buf_len, None, fresh_cache(verifier), done=~defer)
    second = _run(_seq_second_body(spec, verifier, knobs), second, _seq_second_keys(row_keys),
                  sizes)
    out, length, counters = _seq_merge(defer, (first.out, first.length, first.counters),
                                       (second.out, second.length, second.counters))
    state = first.replace(out=out, length=length, counters=counters,
                          step=first.step + second.step)
  counters = state.counters.replace(output_tokens=state.length)
  return DecodeResult(tokens=state.out[:, :max_len], lengths=state.length, counters=counters,
                      steps=jnp.full((batch,), state.step, jnp.int32))


@flax.struct.dataclass
class StreamState:
  """Continuous batching: `slots` rows decode a queue of examples out of N.

  slots: DecodeState [B] of the rows being decoded; example: int32 [B] the example each slot
  decodes (N once the slot has nothing left to do); next: int32 [] the queue position of the
  next example to start; out [N, L + W], length [N], counters [N], aux [N]: the finished
  examples' results (zero for examples not in the queue).
  """
  slots: DecodeState
  example: Array
  next: Array
  out: Array
  length: Array
  counters: Counters
  aux: Array


def _refill_cache(cache: DecoderCache | None, pool: DecoderCache | None, slot_ids: Array,
                  new_ids: Array, count: Array) -> DecoderCache | None:
  """Copies example new_ids[j]'s encoder side (cross keys/values, encoder mask) from `pool`
  [N, ...] into slot slot_ids[j] of `cache` [B, ...], for j < count. The slot's
  self-attention cache is left as is: positions past a row's length are never read."""
  if cache is None:
    return None

  def put(j, c):
    row = lambda dst, src: jax.lax.dynamic_update_slice_in_dim(
        dst, jax.lax.dynamic_slice_in_dim(src, new_ids[j], 1, 0), slot_ids[j], 0)
    return c.replace(cross_k=tuple(map(row, c.cross_k, pool.cross_k)),
                     cross_v=tuple(map(row, c.cross_v, pool.cross_v)),
                     encoder_mask=row(c.encoder_mask, pool.encoder_mask))
  # A loop over the refilled slots only (usually none or one per step): a select over all
  # slots would copy every layer's cross keys/values at every step.
  return jax.lax.fori_loop(0, count, put, cache)


def _stream(make_body, spec: DecodeSpec, keys: Array, d_caches, v_caches,
            queue: Array | None = None, count: Array | None = None) -> StreamState:
  """Runs the examples queue[0], ..., queue[count - 1] (default: all N in order) through the
  slots of the caches, refilling each slot as its example finishes.

  make_body(row_keys [B]) → loop body; keys: [N] each example's row key; d_caches / v_caches:
  (slot cache [B] holding the first B queued examples' encoder side, pool [N] of every
  example's), or (None, None) for a model the method does not use.
  """
  n = keys.shape[0]
  slot_cache = d_caches[0] if d_caches[0] is not None else v_caches[0]
  slots = slot_cache.encoder_mask.shape[0]
  _, buf_len = _lengths(spec)
  queue = jnp.arange(n, dtype=jnp.int32) if queue is None else queue
  count = jnp.int32(n) if count is None else count
  slot_keys = lambda st: keys[jnp.minimum(st.example, n - 1)]

  def write(st: StreamState, s: DecodeState, finished: Array):
    """st with the `finished` slots' results written out."""
    dest = jnp.where(finished, st.example, n)  # n: out of range, the write is dropped
    put = lambda full, part: full.at[dest].set(part, mode="drop")
    return st.replace(out=put(st.out, s.out), length=put(st.length, s.length),
                      counters=jax.tree_util.tree_map(put, st.counters, s.counters),
                      aux=put(st.aux, s.aux))

  def step(st: StreamState) -> StreamState:
    s = make_body(slot_keys(st))(st.slots)
    finished = s.done & (st.example < n)
    st = write(st, s, finished)
    # Finished slots take the next queued examples, in slot order.
    pos = st.next + jnp.cumsum(finished) - 1
    refill = finished & (pos < count)
    new = queue[jnp.clip(pos, 0, n - 1)]
    refilled = jnp.sum(refill, dtype=jnp.int32)
    order = jnp.argsort(~refill, stable=True)  # the refilled slots first
    new_ids = new[order]
    r = refill[:, None]
    slots_state = s.replace(
        out=jnp.where(r, 0, s.out), length=jnp.where(refill, 0, s.length),
        done=s.done & ~refill, verified=jnp.where(refill, 0, s.verified),
        aux=jnp.where(refill, 0.0, s.aux),
        counters=jax.tree_util.tree_map(lambda c: jnp.where(refill, 0, c).astype(c.dtype),
                                        s.counters),
        d_cache=_refill_cache(s.d_cache, d_caches[1], order, new_ids, refilled),
        v_cache=_refill_cache(s.v_cache, v_caches[1], order, new_ids, refilled))
    example = jnp.where(refill, new, jnp.where(finished, n, st.example))
    return st.replace(slots=slots_state, example=example, next=st.next + refilled)

  queued = jnp.arange(slots) < count
  init = StreamState(
      slots=_init_state(slots, buf_len, d_caches[0], v_caches[0], done=~queued),
      example=jnp.where(queued, queue[:slots], n), next=jnp.minimum(count, slots),
      out=jnp.zeros((n, buf_len), jnp.int32), length=jnp.zeros((n,), jnp.int32),
      counters=Counters.zeros(n), aux=jnp.zeros((n,), jnp.float32))
  # Once the queue is empty the stream is a lockstep batch of its last examples: with
  # shrink_batch it stops at a quarter of the slots active and `_run` gathers those into a
  # quarter-size batch, as `decode` does for a batch's slowest rows.
  sizes = stage_sizes(slots, spec.shrink_batch)
  tail = sizes[1] if len(sizes) > 1 else 0
  st = jax.lax.while_loop(
      lambda st: (st.next < count) | (jnp.sum(st.example < n) > tail), step, init)
  if tail:
    s = _run(make_body, st.slots, slot_keys(st), sizes, started=True)
    st = write(st, s, st.example < n)
  return st


def decode_stream(d_model: T5Model | None, v_model: T5Model | None, spec: DecodeSpec,
                  slots: int, d_params, v_params, inputs: Array, example_ids: Array,
                  seed: Array, knobs: Knobs) -> DecodeResult:
  """Decodes N examples through `slots` rows (continuous batching). Pure; jit it with
  `spec`, `slots` and the models static.

  The first `slots` examples start together; whenever rows finish, their results are written
  out and the next examples take their slots (encoder side copied in, counters reset), so a
  step never waits for a batch's slowest row while examples are left. Each example's tokens
  and counters are those `decode` gives it (its draws depend on its example id and its own
  step count only), up to float rounding across batch compositions. With
  `spec.shrink_batch` and ≥ 16 slots, the tail (queue empty, a quarter of the slots busy)
  finishes in a quarter-size batch (`stage_sizes`, `_run`). seq_cascade streams twice: the
  drafter through every example, then the verifier through the deferred ones only.
  inputs: int32 [N, S] (N ≥ slots); example_ids: int32 [N] (−1: padding, never queued).
  Returns DecodeResult [N, ...].
  """
  n = inputs.shape[0]
  if not 1 <= slots <= n:
    raise ValueError(f"decode_stream needs 1 ≤ slots ≤ N; got slots {slots}, N {n}.")
  max_len = spec.max_decode_length
  cache_len, _ = _lengths(spec)
  drafter, verifier = _bundles(d_model, v_model, d_params, v_params)
  all_keys = _row_keys(seed, example_ids)

  def caches(b: Bundle | None, used: bool, first=slice(None, slots)):
    """(slot cache [B] of examples `first`, pool [N]: every example's encoder side), or
    (None, None)."""
    if b is None or not used:
      return None, None
    encoded, mask = _encode(b, "drafter" if b is drafter else "verifier", inputs)
    pool = b.model.init_cache(b.params, encoded, mask, 1)
    return b.model.init_cache(b.params, encoded[first], mask[first], cache_len), pool

  # Padding examples (id −1, added to reach a bucketed shape) are never queued.
  padding = example_ids < 0
  queue = jnp.argsort(padding, stable=True).astype(jnp.int32)
  count = jnp.sum(~padding, dtype=jnp.int32)
  method = methods.get(spec.method)
  if method.body != TWO_PASS:
    st = _stream(_make_body(spec, drafter, verifier, knobs), spec, all_keys,
                 caches(drafter, method.uses_drafter, queue[:slots]),
                 caches(verifier, method.uses_verifier, queue[:slots]), queue, count)
    out, length, counters, steps = st.out, st.length, st.counters, st.slots.step
  else:
    first = _stream(_seq_first_body(spec, drafter, knobs), spec, all_keys,
                    caches(drafter, True, queue[:slots]), (None, None), queue, count)
    defer = _seq_defer(first.aux, first.length, knobs) & ~padding
    # Only the deferred examples go through the verifier, in their order.
    queue = jnp.argsort(~defer, stable=True).astype(jnp.int32)
    second = _stream(_seq_second_body(spec, verifier, knobs), spec, _seq_second_keys(all_keys),
                     (None, None), caches(verifier, True, queue[:slots]), queue,
                     jnp.sum(defer, dtype=jnp.int32))
    out, length, counters = _seq_merge(defer, (first.out, first.length, first.counters),
                                       (second.out, second.length, second.counters))
    steps = first.slots.step + second.slots.step
  counters = counters.replace(output_tokens=length)
  return DecodeResult(tokens=out[:, :max_len], lengths=length, counters=counters,
                      steps=jnp.full((n,), steps, jnp.int32))


def _jit(fn, mesh):
  """jax.jit(fn), or with a data-parallel mesh ('model' of size 1) jit of a `jax.shard_map`
  in which each device runs fn on its own contiguous share of the examples.

  No collective runs inside the decode loop, so each device's loop stops when its own rows
  are done instead of stepping in lockstep with the slowest row of the whole batch (which
  the same loop partitioned by XLA would do: its loop condition is global). Inputs, ids and
  every output are split over 'data'; parameters, seed and knobs are replicated."""
  if mesh is None:
    return jax.jit(fn)
  rep, data = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("data")
  # check_vma=False: the loop state mixes values that start replicated (step counters, the
  # stream's queue position) with per-device ones, which while_loop's carry check rejects.
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(rep, rep, data, data, rep, rep),
                               out_specs=data, check_vma=False))


def _models(d_config: T5Config | None, v_config: T5Config | None):
  return (T5Model(d_config) if d_config is not None else None,
          T5Model(v_config) if v_config is not None else None)


def compiled_stream(d_config: T5Config | None, v_config: T5Config | None, spec: DecodeSpec,
                    slots: int, mesh=None, shape: tuple[int, int] | None = None):
  """The jitted `decode_stream` for one (models, spec, slots[, input shape]); with a
  data-parallel mesh, each device streams its share of the examples through slots / D rows
  (`_jit`). Kept in the bounded `programs.PROGRAMS` cache, one entry per shape given."""
  size = 1 if mesh is None else mesh.shape["data"]
  return programs.PROGRAMS.get(
      ("stream", d_config, v_config, spec, slots, mesh, shape),
      lambda: _jit(functools.partial(decode_stream, *_models(d_config, v_config), spec,
                                     slots // size), mesh))


def compiled_decode(d_config: T5Config | None, v_config: T5Config | None, spec: DecodeSpec,
                    mesh=None, shape: tuple[int, int] | None = None):
  """The jitted `decode` for one (models, spec[, data-parallel mesh: `_jit`][, input shape]),
  kept in the bounded `programs.PROGRAMS` cache so repeated calls reuse it. `generate` passes
  the (bucketed) shape, so each cache entry holds one compiled program."""
  return programs.PROGRAMS.get(
      ("decode", d_config, v_config, spec, mesh, shape),
      lambda: _jit(functools.partial(decode, *_models(d_config, v_config), spec), mesh))


# ----------------------------------------------------------------------------------------------
# The plain Python API

@dataclasses.dataclass
class GenerateOutput:
  """tokens: int32 [B, max_decode_length] (0 after EOS); lengths: [B]; counters: name → [B];
  wall_s: wall-clock of the decode call (compilation excluded when warm).
  num_draft_tokens: the γ the speculative methods ran with (0: 'auto' chose the verifier
  alone; None for methods without blocks); gamma_choice: what 'auto' measured."""
  tokens: np.ndarray
  lengths: np.ndarray
  counters: dict[str, np.ndarray]
  wall_s: float
  num_draft_tokens: int | None = None
  gamma_choice: autogamma.GammaChoice | None = None
  # Iterations of the longest loop the call ran (under a data-parallel mesh each device runs
  # its own loop; rows that exist only as padding start finished and add none).
  loop_steps: int | None = None


def resolve_rule(method: str, rule: str | None) -> str | None:
  """The rule a method runs with (`Method.rules` / `default_rule`); ValueError when the pair
  makes no sense."""
  m = methods.get(method)
  if m.rules == ():
    if rule is not None:
      raise ValueError(f"method {method!r} takes no deferral rule (got rule={rule!r}).")
    return None
  if m.rules is not methods.ANY_RULE:
    if rule not in (None,) + m.rules:
      raise ValueError(m.rule_error.format(method=method, rule=rule, want=m.default_rule))
    return rule or m.default_rule
  rule = rule or m.default_rule
  if rule is None:
    raise ValueError(f"method {method!r} needs a rule: one of "
                     f"{', '.join(sorted(deferral.RULES))}.")
  deferral.get_rule(rule)
  return rule


def make_spec(method: str, rule: str | None = None, *, num_draft_tokens: int | None = 5,
              max_decode_length: int = 64, top_k: int = 0, beta: float | None = None,
              token_cascade_window: int = 8, bild_max_window: int = 10,
              shrink_batch: bool = True, dynamic_draft: bool = False) -> DecodeSpec:
  """Validated DecodeSpec (the static part of a decode)."""
  rule = resolve_rule(method, rule)
  blocks = methods.get(method).gamma == methods.GAMMA_BLOCK
  if dynamic_draft and not blocks:
    raise ValueError(f"draft_confidence (dynamic draft length) applies to the speculative "
                     f"methods ({', '.join(sorted(methods.BLOCK_METHODS))}); method {method!r} "
                     "drafts no blocks.")
  checks = [("max_decode_length", max_decode_length, 1),
            ("token_cascade_window", token_cascade_window, 1),
            ("bild_max_window", bild_max_window, 1)]
  # Where γ does not apply None means "no γ"; any other value is still checked, so a caller's
  # bad γ is an error whichever method it goes with.
  if blocks or num_draft_tokens is not None:
    checks.insert(0, ("num_draft_tokens", num_draft_tokens, 1))
  for name, v, lo in checks:
    if not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}.")
  return DecodeSpec(method=method, rule=rule,
                    num_draft_tokens=int(num_draft_tokens) if blocks else None,
                    max_decode_length=int(max_decode_length),
                    top_k=sampling.validate_top_k(top_k), solve_beta=beta is None,
                    token_cascade_window=int(token_cascade_window),
                    bild_max_window=int(bild_max_window), shrink_batch=bool(shrink_batch),
                    dynamic_draft=bool(dynamic_draft))


def make_knobs(spec: DecodeSpec, *, alpha: float = 0.0, beta: float | None = None,
               temperature: float = 1.0, top_p: float = 1.0, fallback_threshold: float = 0.6,
               rollback_threshold: float = 3.0, draft_confidence: float | None = None) -> Knobs:
  """Validated traced knobs."""
  sampling.validate_sampling_params(temperature, spec.top_k, top_p)
  if draft_confidence is not None and not 0.0 <= float(draft_confidence) <= 1.0:
    raise ValueError(f"draft_confidence must be in [0, 1] (a probability), got "
                     f"{draft_confidence!r}.")
  if spec.rule is not None and methods.get(spec.method).alpha is not None:
    deferral.validate_alpha(spec.rule, alpha)
    deferral.validate_beta(spec.rule, alpha, beta)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return Knobs(alpha=f32(alpha), beta=f32(1.0 if beta is None else beta),
               temperature=f32(temperature), top_p=f32(top_p),
               fallback_threshold=f32(fallback_threshold),
               rollback_threshold=f32(rollback_threshold),
               draft_confidence=f32(0.0 if draft_confidence is None else draft_confidence))


def _check_inputs(inputs, vocab_size: int | None = None) -> np.ndarray:
  """inputs as int32 [B, S]; ValueError naming what is wrong for anything else (wrong rank or
  dtype, no rows or columns, token ids outside [0, vocab_size))."""
  arr = np.asarray(inputs)
  if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
    raise ValueError(f"inputs must be integer token ids [batch, length], got dtype {arr.dtype} "
                     f"shape {arr.shape}.")
  if arr.dtype == bool:
    raise ValueError("inputs must be integer token ids [batch, length], got a bool array.")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"inputs must hold at least one row and one column, got shape "
                     f"{arr.shape}; pad an empty input to one column of 0 (padding).")
  if vocab_size is not None:
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
      row, col = map(int, np.argwhere(bad)[0])
      raise ValueError(f"inputs hold token ids outside the vocabulary [0, {vocab_size}): "
                       f"{int(arr[row, col])} at row {row}, column {col} "
                       f"({int(bad.sum())} such ids). Tokenise with the pair's vocabulary; "
                       "use 0 for padding.")
  return arr.astype(np.int32)


def _vocab_size(drafter: Bundle | None, verifier: Bundle | None) -> int | None:
  sizes = [b.model.config.vocab_size for b in (drafter, verifier) if b is not None]
  return min(sizes) if sizes else None


def generate(drafter: Bundle | None, verifier: Bundle | None, inputs, *, method: str,
             rule: str | None = None, alpha: float = 0.0, beta: float | None = None,
             num_draft_tokens: int = 5, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, example_ids=None, max_decode_length: int = 64,
             fallback_threshold: float = 0.6, rollback_threshold: float = 3.0,
             bild_max_window: int = 10, token_cascade_window: int = 8,
             shrink_batch: bool = True, slots: int | None = None, mesh=None,
             draft_candidates: tuple[int, ...] = autogamma.DEFAULT_CANDIDATES,
             draft_confidence: float | None = None,
             bucket_shapes: bool = True) -> GenerateOutput:
  """Decodes `inputs` [B, S] with `method`; see the module docstring for the methods.

  drafter / verifier: `Bundle(T5Model, params)` (either may be None when the method does not
  use it). alpha, beta, temperature, top_p and the BiLD thresholds are traced: changing them
  reuses the compiled program. example_ids [B] (default 0..B-1) seed each row's randomness.
  mesh: optional `jax.sharding.Mesh` with 'data' and 'model' axes; the batch is split over
  'data' (padded to a multiple of its size). Data parallel ('model' of size 1): each device
  decodes rows d, d + D, ... in its own loop (`_jit`), stopping when its rows are done. With
  'model' > 1 the parameters are split by the `spec_cascade.parallel` rules and XLA
  partitions one loop over the mesh.
  shrink_batch: a batch of ≥ 16 rows goes on as a quarter-size batch once at most that many
  rows are still decoding (`stage_sizes`; outputs unchanged, compilation ×2); False keeps the
  whole batch in every call.
  slots: decode the B inputs through this many rows at a time (continuous batching,
  `decode_stream`): a finished row's slot takes the next input at once, so no step waits for a
  batch's slowest row. Same outputs as without. With a mesh (data
  parallel only), slots must be a multiple of its 'data' size: each device streams its share.
  num_draft_tokens='auto' (speculative methods): the first call times every γ in
  draft_candidates on these inputs (and SpecDecode also the verifier alone) and runs the
  fastest; later calls with the same settings and shapes reuse the choice (`autogamma`).
  draft_confidence (speculative methods): a dynamic draft length — a row stops drafting after
  the first draft at which the drafter's top probability is below this value, so a block
  proposes 1..γ drafts (HF's assistant_confidence_threshold, BiLD's fallback); drafter calls no
  row needs are skipped. Outputs keep the target's distribution exactly. None: always γ.
  bucket_shapes: pad inputs to a bucketed [batch, length] (`spec_cascade.programs`), so that
  calls over many input shapes share a few compiled programs; the compiled programs a process
  keeps are bounded either way (`programs.set_capacity`). Padding changes no output beyond
  float rounding. False compiles for the exact shape given.
  Token ids must lie in [0, vocab size); 0 is padding.
  """
  autogamma.check(num_draft_tokens, method)
  if num_draft_tokens == autogamma.AUTO:
    return _generate_auto(drafter, verifier, inputs, method=method, rule=rule, alpha=alpha,
                          beta=beta, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, example_ids=example_ids,
                          max_decode_length=max_decode_length,
                          fallback_threshold=fallback_threshold,
                          rollback_threshold=rollback_threshold,
                          bild_max_window=bild_max_window,
                          token_cascade_window=token_cascade_window, shrink_batch=shrink_batch,
                          slots=slots, mesh=mesh, candidates=tuple(draft_candidates),
                          draft_confidence=draft_confidence, bucket_shapes=bucket_shapes)
  spec = make_spec(method, rule, num_draft_tokens=num_draft_tokens,
                   max_decode_length=max_decode_length, top_k=top_k, beta=beta,
                   token_cascade_window=token_cascade_window, bild_max_window=bild_max_window,
                   shrink_batch=shrink_batch, dynamic_draft=draft_confidence is not None)
  knobs = make_knobs(spec, alpha=alpha, beta=beta, temperature=temperature, top_p=top_p,
                     fallback_threshold=fallback_threshold, rollback_threshold=rollback_threshold,
                     draft_confidence=draft_confidence)
  inputs = _check_inputs(inputs, _vocab_size(drafter, verifier))
  batch = inputs.shape[0]
  ids = np.arange(batch) if example_ids is None else np.asarray(example_ids)
  if ids.shape != (batch,):
    raise ValueError(f"example_ids must have shape ({batch},), got {ids.shape}.")
  if not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
    raise ValueError(f"example_ids must be non-negative ints (they seed each row's draws), "
                     f"got {ids!r}.")
  m = methods.get(method)
  if m.uses_drafter and drafter is None:
    raise ValueError(f"method {method!r} needs a drafter Bundle(model, params).")
  if m.uses_verifier and verifier is None:
    raise ValueError(f"method {method!r} needs a verifier Bundle(model, params).")
  if drafter is not None and verifier is not None:
    dv, vv = drafter.model.config.vocab_size, verifier.model.config.vocab_size
    if dv != vv:
      raise ValueError(f"drafter vocab_size {dv} != verifier vocab_size {vv}: speculative and "
                       "cascade methods need one shared vocabulary.")
  stream = slots is not None and slots < batch
  if slots is not None:
    if not isinstance(slots, (int, np.integer)) or slots < 1:
      raise ValueError(f"slots must be a positive int (rows decoded at a time), got {slots!r}.")
    if stream and mesh is not None:
      parallel.check_stream_mesh(mesh, slots)
  use_d = drafter if m.uses_drafter else None
  use_v = verifier if m.uses_verifier else None
  d_params = use_d.params if use_d else None
  v_params = use_v.params if use_v else None
  ids = ids.astype(np.int32)
  if bucket_shapes:
    # A stream's queue (N examples) is bucketed like a batch; its slots stay as given.
    inputs, ids = programs.pad_to_buckets(inputs, ids, pad_id=PAD_ID)
  order, per_device = None, mesh is not None and mesh.shape["model"] == 1
  if mesh is not None:
    if per_device:
      # Device d decodes rows d, d + D, ...: inputs sorted by length spread evenly.
      inputs, ids, order = parallel.interleave_batch(mesh, inputs, ids)
    else:
      inputs, ids, _ = parallel.pad_batch(mesh, inputs, ids)
    inputs, ids = parallel.shard_batch(mesh, inputs), parallel.shard_batch(mesh, ids)
    d_params = parallel.shard_params(mesh, d_params) if d_params is not None else None
    v_params = parallel.shard_params(mesh, v_params) if v_params is not None else None
  configs = (use_d.model.config if use_d else None, use_v.model.config if use_v else None)
  # The mesh goes in only when set: lru_cache keys f(x) and f(x, None) apart.
  on = (mesh,) if per_device else ()
  shape = tuple(inputs.shape)
  fn = (compiled_stream(*configs, spec, int(slots), *on, shape=shape) if stream
        else compiled_decode(*configs, spec, *on, shape=shape))
  t0 = time.perf_counter()
  res = jax.block_until_ready(fn(d_params, v_params, jnp.asarray(inputs), jnp.asarray(ids),
                                 jnp.int32(seed), knobs))
  wall = time.perf_counter() - t0
  # Back to the input order; rows past `batch` are the mesh's padding.
  back = slice(None) if order is None else np.argsort(order)
  rows = lambda x: pod.to_host(x)[back][:batch]
  counters = {f: rows(getattr(res.counters, f)) for f in COUNTER_FIELDS}
  return GenerateOutput(tokens=rows(res.tokens), lengths=rows(res.lengths), counters=counters,
                        wall_s=wall, num_draft_tokens=spec.num_draft_tokens,
                        loop_steps=int(pod.to_host(res.steps).max()))


def _generate_auto(drafter, verifier, inputs, *, method: str, candidates: tuple[int, ...],
                   **kw) -> GenerateOutput:
  """generate(num_draft_tokens='auto'): measure (once per settings and shape), then decode."""
  if not candidates or any(not isinstance(g, (int, np.integer)) or g < 1 for g in candidates):
    raise ValueError(f"draft_candidates must be positive ints, got {candidates!r}.")
  if drafter is None or verifier is None:
    raise ValueError(f"method {method!r} needs a drafter and a verifier Bundle(model, params).")
  inputs = _check_inputs(inputs, _vocab_size(drafter, verifier))
  slots = kw["slots"]
  timing = {k: v for k, v in kw.items() if k not in ("seed", "example_ids", "rule")}
  key = autogamma.choice_key(drafter, verifier, method, kw["rule"], inputs.shape,
                             candidates=candidates, **timing)
  choice = autogamma.cached(key)
  if choice is None:
    # Warm-up on the first `slots` rows when streaming (the rows a step decodes at a time).
    rows = slots if slots is not None and slots < inputs.shape[0] else inputs.shape[0]
    ids = (np.arange(inputs.shape[0]) if kw["example_ids"] is None
           else np.asarray(kw["example_ids"]))[:rows]
    warm = dict(kw, example_ids=ids, slots=None)

    def run(gamma: int) -> GenerateOutput:
      if gamma == 0:
        return generate(None, verifier, inputs[:rows], **dict(warm, method="verifier", rule=None,
                                                             num_draft_tokens=1))
      return generate(drafter, verifier, inputs[:rows], method=method,
                      num_draft_tokens=int(gamma), **warm)

    seconds, acceptance = autogamma.measure(run, candidates,
                                            include_verifier=methods.get(method).lossless)
    choice = autogamma.remember(
        key, autogamma.GammaChoice(autogamma.pick(seconds), seconds, acceptance))
  gamma = choice.gamma
  if gamma == 0:
    out = generate(None, verifier, inputs, **dict(kw, method="verifier", rule=None,
                                                  num_draft_tokens=1))
  else:
    out = generate(drafter, verifier, inputs, method=method, num_draft_tokens=gamma, **kw)
  return dataclasses.replace(out, num_draft_tokens=gamma, gamma_choice=choice)
