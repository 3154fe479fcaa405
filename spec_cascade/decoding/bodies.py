"""Loop bodies, one per `Method.body` (spec_cascade.methods): each maps DecodeState →
DecodeState for one step of its method, and reaches the models only through
`decoding.contract` (so one body serves T5 and decoder-only pairs).

  one_model        autoregressive decoding with one model
  token_level      token_cascade (the verifier only when a row defers) and the oracle
  draft_verify     spec_decode, spec_decode_lossy, spec_cascade: γ drafts, one verifier call,
                   `sampling.verify_with_target` toward the rule's target
  draft_rollback   BiLD
  (two_pass)       seq_cascade's two loops, run by `loops.decode` with the `seq_*` helpers here

A new method's body goes in `BODIES` (docs/methods.md).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from spec_cascade import deferral, methods, sampling
from spec_cascade.decoding import contract
from spec_cascade.decoding.ops import all_greedy, argmax, commit, draw, last_input, step_keys
from spec_cascade.decoding.state import PAD_ID, Bundle, DecodeSpec, DecodeState, Knobs

Array = jax.Array


def _rule_fn(spec: DecodeSpec, knobs: Knobs):
  """The target map a body applies: the spec's rule, or with a rule set the one
  `knobs.rule_index` picks at run time (`deferral.switched`)."""
  if spec.rule_set:
    return deferral.switched(spec.rule_set, knobs.rule_index)
  return deferral.get_rule(spec.rule).fn


def _autoregressive_body(model: Any, params, which: str, spec: DecodeSpec, knobs: Knobs,
                         row_keys: Array, track_logq: bool = False):
  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n = state.length
    x = last_input(state.out, n)
    cache = state.d_cache if which == "drafter" else state.v_cache
    logits, cache = contract.score(which, Bundle(model, params), cache, x[:, None], n)
    keys = lambda: step_keys(row_keys, state.counters.blocks, 1)[0]
    tok = draw(keys, logits[:, 0], knobs, spec.top_k)
    out, length, done, _ = commit(state, tok[:, None], jnp.ones_like(n), spec)
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
  rule_fn = _rule_fn(spec, knobs)
  # SpecDecode's target is p̃ at every position, so q_γ (the drafter's distribution after
  # the last draft) is never read: skip that drafter step and let the next block's first
  # drafter call take two tokens instead (γ drafter calls per block, not γ + 1).
  lazy_last = spec.rule == "verifier"

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n = state.length
    x0 = last_input(state.out, n)
    # Derived inside the sampling branches only (greedy decoding never needs them).
    keys = lambda: step_keys(row_keys, state.counters.blocks, gamma + 2)

    def draft(j, cache, tok):
      logits, cache = contract.score("drafter", drafter, cache, tok[:, None], n + j)
      return logits[:, 0], draw(lambda: keys()[j], logits[:, 0], knobs, spec.top_k), cache

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
      prev = last_input(state.out, start)
      logits2, d_cache = contract.score("drafter", drafter, state.d_cache,
                                     jnp.stack([prev, x0], axis=1), start)
      q0 = jnp.where((n > 0)[:, None], logits2[:, 1], logits2[:, 0])
      q_list = [q0]
      draft_list = [draw(lambda: keys()[0], q0, knobs, spec.top_k)]
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
    v_logits, v_cache = contract.score("verifier", verifier, state.v_cache, v_tokens, n)

    def verify():
      d_logits = jnp.stack(q_list, axis=1)  # [B, γ+1, V] (q_γ zeros if lazy_last)
      probs = deferral.rule_inputs(d_logits, v_logits, knobs.temperature, spec.top_k,
                                   knobs.top_p)
      beta = None if spec.solve_beta else knobs.beta
      pi, defer = rule_fn(probs.q_scaled, probs.p_scaled, probs.q, probs.p, knobs.alpha, beta)
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
      best = argmax(v_logits)  # [B, γ+1]
      verdict, _ = greedy_block(drafts == best[:, :gamma], best)
      return verdict + (jnp.ones(best.shape, jnp.float32),)

    def verify_lenient_greedy():
      # Lossy SpecDecode at T = 0 (Leviathan et al.'s lenient greedy acceptance): a greedy
      # draft x is accepted iff p(x) ≥ (1 − α)·max p under the verifier's untempered p, and
      # the token after the accepted prefix is argmax p. α = 0 is greedy SpecDecode; the
      # temperature-scaled lossy target would be one-hot at T = 0 and ignore α.
      logp = jax.nn.log_softmax(v_logits[:, :gamma].astype(jnp.float32), axis=-1)
      best = argmax(v_logits)  # [B, γ+1]
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
        verdict = jax.lax.cond(all_greedy(knobs), verify_greedy, verify)
      elif spec.method == "spec_decode_lossy":
        verdict = jax.lax.cond(all_greedy(knobs), verify_lenient_greedy, verify)
      else:
        verdict = verify()
    tokens, num_emitted, num_accepted, rejected, is_bonus, fallback, defer_weight = verdict

    with jax.named_scope("commit"):
      out, length, done, n_new = commit(state, tokens, num_emitted, spec)
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
  rule_fn = _rule_fn(spec, knobs)
  vocab = verifier.model.config.vocab_size

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    n, m = state.length, state.verified
    x = last_input(state.out, n)
    keys = step_keys(row_keys, state.counters.blocks, 1)[0]
    d_logits, d_cache = contract.score("drafter", drafter, state.d_cache, x[:, None], n)
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
      return contract.score("verifier", verifier, v_cache, toks, start)

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
    pi, defer = rule_fn(probs.q_scaled, probs.p_scaled, probs.q, probs.p, knobs.alpha, beta)
    tok = jax.vmap(sampling.categorical)(keys, pi)
    out, length, done, n_new = commit(state, tok[:, None], jnp.ones_like(n), spec)
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
    x0 = last_input(state.out, n)

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
      logits, cache = contract.score("drafter", drafter, cache, tok[:, None], n + j)
      return take(j, logits[:, 0], (j, cache) + c[2:])

    # The first call also writes position n − 1 (input out[n − 2]): when the previous block
    # kept and accepted its whole window, its last draft was never fed to the drafter, so
    # that cache entry is missing (otherwise it is rewritten unchanged). At n = 0 it writes
    # BOS at 0 and a throw-away entry at 1 that the next call overwrites.
    start = jnp.maximum(n - 1, 0)
    prev = last_input(state.out, start)
    logits2, d_cache = contract.score("drafter", drafter, state.d_cache,
                                   jnp.stack([prev, x0], axis=1), start)
    q0 = jnp.where((n > 0)[:, None], logits2[:, 1], logits2[:, 0])
    zeros = jnp.zeros((batch,), jnp.int32)
    first = take(0, q0, (jnp.int32(0), d_cache, x0, active,
                         jnp.zeros((batch, wmax), jnp.int32), zeros, zeros))
    # Kept drafts are contiguous from 0 (a row stops drafting at its first unsure step).
    _, d_cache, _, _, drafts, steps, width = jax.lax.while_loop(cond, draft, first)
    v_tokens = jnp.concatenate([x0[:, None], drafts], axis=1)
    v_logits, v_cache = contract.score("verifier", verifier, state.v_cache, v_tokens, n)
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
    out, length, done, n_new = commit(state, tokens, accepted + 1, spec)
    rolled_back = accepted < width
    counters = state.counters.add(
        active, drafter_steps=steps, verifier_calls=1, drafted=width, accepted=accepted,
        rejected=rolled_back, blocks=1, bonus_tokens=(~rolled_back) & (width == wmax),
        deferred=(n_new > accepted).astype(jnp.float32))
    return state.replace(out=out, length=length, done=done, d_cache=d_cache, v_cache=v_cache,
                         counters=counters, step=state.step + 1)
  return body


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


def make_body(spec: DecodeSpec, drafter: Bundle | None, verifier: Bundle | None,
              knobs: Knobs):
  """make_body(row_keys [B]) → the loop body of a one-loop method (all but two-pass ones)."""
  method = methods.get(spec.method)
  return BODIES[method.body](method, spec, drafter, verifier, knobs)


# seq_cascade: the drafter decodes every row; rows whose length-normalised confidence
# exp(Σ log q / length) is below 1 − α are decoded again by the verifier.

def seq_first_body(spec: DecodeSpec, drafter: Bundle, knobs: Knobs):
  return lambda keys: _autoregressive_body(drafter.model, drafter.params, "drafter", spec,
                                           knobs, keys, track_logq=True)


def seq_second_body(spec: DecodeSpec, verifier: Bundle, knobs: Knobs):
  return lambda keys: _autoregressive_body(verifier.model, verifier.params, "verifier", spec,
                                           knobs, keys)


def seq_second_keys(row_keys: Array) -> Array:
  """The verifier pass's keys [B]: its own stream per row, apart from the drafter pass's."""
  return jax.vmap(lambda k: jax.random.fold_in(k, 1))(row_keys)


def seq_defer(logq_sum: Array, length: Array, knobs: Knobs) -> Array:
  """bool [B]: rows the verifier decodes again (Chow on the sequence's mean log q)."""
  return jnp.exp(logq_sum / jnp.maximum(length, 1)) < 1.0 - knobs.alpha


def seq_merge(defer: Array, first, second):
  """(out, length, counters) of seq_cascade from its two passes' (out, length, counters):
  a deferred row's tokens are the verifier's, and its counters add both passes' work."""
  (o1, n1, c1), (o2, n2, c2) = first, second
  counters = c1.replace(
      verifier_calls=c2.verifier_calls, blocks=c1.blocks + c2.blocks,
      deferred=jnp.where(defer, n2, 0).astype(jnp.float32))
  return jnp.where(defer[:, None], o2, o1), jnp.where(defer, n2, n1), counters
