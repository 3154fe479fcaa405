"""The decode loops: `decode` (a batch, lockstep, shrinking once most rows are done) and
`decode_stream` (continuous batching), each a pure function compiled once per (models, spec,
shape) and kept in the bounded `programs.PROGRAMS` cache (`compiled_decode`,
`compiled_stream`). The loops know methods only through `bodies.make_body` and models only
through `contract`.
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from spec_cascade import methods, programs
from spec_cascade.decoding import contract
from spec_cascade.decoding.bodies import (make_body, seq_defer, seq_first_body, seq_merge,
                                          seq_second_body, seq_second_keys)
from spec_cascade.decoding.ops import row_keys
from spec_cascade.decoding.state import (TWO_PASS, Bundle, Counters, DecodeResult, DecodeSpec,
                                         DecodeState, Knobs)

Array = jax.Array


def init_state(batch: int, buf_len: int, d_cache, v_cache, done=None) -> DecodeState:
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


def run_stages(body_for, state: DecodeState, keys: Array, sizes: tuple[int, ...],
               started: bool = False) -> DecodeState:
  """Runs body_for(keys) until every row is done, shrinking the batch between stages.

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
                                                   body_for(keys), s)
  full = state = state if started else loop(state, keys, leaves[0])
  rows = jnp.arange(sizes[0])  # each row of `state`: its index in `full`
  per_row = lambda s: s.replace(step=None, d_cache=None, v_cache=None)
  for size, leave in zip(sizes[1:], leaves[1:]):
    # Active rows first, in their order; the stage keeps `size` rows (≥ the active ones).
    keep = jnp.argsort(state.done, stable=True)[:size]
    rows, keys = rows[keep], keys[keep]
    state = loop(jax.tree_util.tree_map(lambda x: x[keep], state.replace(step=None)).replace(
        step=state.step), keys, leave)
    full = jax.tree_util.tree_map(lambda f, p: f.at[rows].set(p), per_row(full),
                                  per_row(state)).replace(step=state.step,
                                                          d_cache=full.d_cache,
                                                          v_cache=full.v_cache)
  return full


def buffer_lengths(spec: DecodeSpec) -> tuple[int, int]:
  """(cache length, output buffer length): room for max_decode_length plus the widest block
  (a block may run past the last position before EOS / the cap cuts it)."""
  width = methods.get(spec.method).width(spec)
  return spec.max_decode_length + width + 1, spec.max_decode_length + width


def _bundles(d_model, v_model, d_params, v_params):
  """(drafter, verifier) Bundles, None where a model is not given."""
  return (Bundle(d_model, d_params) if d_model is not None else None,
          Bundle(v_model, v_params) if v_model is not None else None)


def _shared_encoding(spec: DecodeSpec, method, verifier: Bundle | None, inputs: Array):
  """The verifier's (encoded, mask) of inputs [B, S] when both models read it
  (`spec.shared_encoder`), else None (each model encodes for itself)."""
  if spec.shared_encoder and method.uses_drafter and method.uses_verifier:
    return contract.encode("verifier", verifier, inputs)
  return None


def decode(d_model, v_model, spec: DecodeSpec, d_params,
           v_params, inputs: Array, example_ids: Array, seed: Array, knobs: Knobs
           ) -> DecodeResult:
  """Decodes a batch with `spec.method`. Pure; jit it with `spec` and the models static.

  inputs: int32 [B, S] encoder tokens or right-padded prompts (0 = padding); example_ids:
  int32 [B] (−1: a padding row, finished from the start); seed: int32 [].
  Returns DecodeResult with tokens [B, max_decode_length].
  """
  batch = inputs.shape[0]
  max_len = spec.max_decode_length
  cache_len, buf_len = buffer_lengths(spec)
  keys = row_keys(seed, example_ids)
  sizes = stage_sizes(batch, spec.shrink_batch)
  drafter, verifier = _bundles(d_model, v_model, d_params, v_params)
  method = methods.get(spec.method)
  encoded = _shared_encoding(spec, method, verifier, inputs)
  drafter_cache = lambda: contract.start("drafter", drafter, inputs, cache_len, encoded)
  verifier_cache = lambda: contract.start("verifier", verifier, inputs, cache_len, encoded)

  padding = example_ids < 0  # rows the API added to reach a bucketed shape: never decoded
  if method.body != TWO_PASS:
    state = init_state(batch, buf_len,
                       drafter_cache() if method.uses_drafter else None,
                       verifier_cache() if method.uses_verifier else None,
                       done=padding)
    state = run_stages(make_body(spec, drafter, verifier, knobs), state, keys, sizes)
  else:
    first = init_state(batch, buf_len, drafter_cache(), None, done=padding)
    first = run_stages(seq_first_body(spec, drafter, knobs), first, keys, sizes)
    defer = seq_defer(first.aux, first.length, knobs) & ~padding
    second = init_state(batch, buf_len, None, verifier_cache(), done=~defer)
    second = run_stages(seq_second_body(spec, verifier, knobs), second, seq_second_keys(keys),
                        sizes)
    out, length, counters = seq_merge(defer, (first.out, first.length, first.counters),
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


def _stream(body_for, spec: DecodeSpec, keys: Array, drafter: Bundle | None,
            verifier: Bundle | None, d_caches, v_caches, queue: Array | None = None,
            count: Array | None = None) -> StreamState:
  """Runs the examples queue[0], ..., queue[count - 1] (default: all N in order) through the
  slots of the caches, refilling each slot as its example finishes.

  body_for(row keys [B]) → loop body; keys: [N] each example's row key; d_caches / v_caches:
  (slot cache [B] holding the first B queued examples' context, the pool of every example's:
  `contract.start_stream`), or (None, None) for a model the method does not use.
  """
  n = keys.shape[0]
  slot_cache = d_caches[0] if d_caches[0] is not None else v_caches[0]
  slots = contract.batch_size(slot_cache)
  _, buf_len = buffer_lengths(spec)
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
    s = body_for(slot_keys(st))(st.slots)
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
        d_cache=contract.refill(drafter, s.d_cache, d_caches[1], order, new_ids, refilled),
        v_cache=contract.refill(verifier, s.v_cache, v_caches[1], order, new_ids, refilled))
    example = jnp.where(refill, new, jnp.where(finished, n, st.example))
    return st.replace(slots=slots_state, example=example, next=st.next + refilled)

  queued = jnp.arange(slots) < count
  init = StreamState(
      slots=init_state(slots, buf_len, d_caches[0], v_caches[0], done=~queued),
      example=jnp.where(queued, queue[:slots], n), next=jnp.minimum(count, slots),
      out=jnp.zeros((n, buf_len), jnp.int32), length=jnp.zeros((n,), jnp.int32),
      counters=Counters.zeros(n), aux=jnp.zeros((n,), jnp.float32))
  # Once the queue is empty the stream is a lockstep batch of its last examples: with
  # shrink_batch it stops at a quarter of the slots active and `run_stages` gathers those into a
  # quarter-size batch, as `decode` does for a batch's slowest rows.
  sizes = stage_sizes(slots, spec.shrink_batch)
  tail = sizes[1] if len(sizes) > 1 else 0
  st = jax.lax.while_loop(
      lambda st: (st.next < count) | (jnp.sum(st.example < n) > tail), step, init)
  if tail:
    s = run_stages(body_for, st.slots, slot_keys(st), sizes, started=True)
    st = write(st, s, st.example < n)
  return st


def decode_stream(d_model, v_model, spec: DecodeSpec, slots: int, d_params, v_params,
                  inputs: Array, example_ids: Array, seed: Array, knobs: Knobs
                  ) -> DecodeResult:
  """Decodes N examples through `slots` rows (continuous batching). Pure; jit it with
  `spec`, `slots` and the models static.

  The first `slots` examples start together; whenever rows finish, their results are written
  out and the next examples take their slots (context started, counters reset), so a
  step never waits for a batch's slowest row while examples are left. Each example's tokens
  and counters are those `decode` gives it (its draws depend on its example id and its own
  step count only), up to float rounding across batch compositions. With
  `spec.shrink_batch` and ≥ 16 slots, the tail (queue empty, a quarter of the slots busy)
  finishes in a quarter-size batch (`stage_sizes`, `run_stages`). seq_cascade streams twice:
  the drafter through every example, then the verifier through the deferred ones only.
  inputs: int32 [N, S] (N ≥ slots); example_ids: int32 [N] (−1: padding, never queued).
  Returns DecodeResult [N, ...].
  """
  n = inputs.shape[0]
  if not 1 <= slots <= n:
    raise ValueError(f"decode_stream needs 1 ≤ slots ≤ N; got slots {slots}, N {n}.")
  max_len = spec.max_decode_length
  cache_len, _ = buffer_lengths(spec)
  drafter, verifier = _bundles(d_model, v_model, d_params, v_params)
  all_keys = row_keys(seed, example_ids)
  method = methods.get(spec.method)
  encoded = _shared_encoding(spec, method, verifier, inputs)

  def caches(b: Bundle | None, used: bool, first=slice(None, slots)):
    """(slot cache [B] of examples `first`, pool [N] of every example's context), or
    (None, None)."""
    if b is None or not used:
      return None, None
    role = "drafter" if b is drafter else "verifier"
    return contract.start_stream(role, b, inputs, first, cache_len, encoded)

  # Padding examples (id −1, added to reach a bucketed shape) are never queued.
  padding = example_ids < 0
  queue = jnp.argsort(padding, stable=True).astype(jnp.int32)
  count = jnp.sum(~padding, dtype=jnp.int32)
  if method.body != TWO_PASS:
    st = _stream(make_body(spec, drafter, verifier, knobs), spec, all_keys, drafter, verifier,
                 caches(drafter, method.uses_drafter, queue[:slots]),
                 caches(verifier, method.uses_verifier, queue[:slots]), queue, count)
    out, length, counters, steps = st.out, st.length, st.counters, st.slots.step
  else:
    first = _stream(seq_first_body(spec, drafter, knobs), spec, all_keys, drafter, None,
                    caches(drafter, True, queue[:slots]), (None, None), queue, count)
    defer = seq_defer(first.aux, first.length, knobs) & ~padding
    # Only the deferred examples go through the verifier, in their order.
    queue = jnp.argsort(~defer, stable=True).astype(jnp.int32)
    second = _stream(seq_second_body(spec, verifier, knobs), spec, seq_second_keys(all_keys),
                     None, verifier, (None, None), caches(verifier, True, queue[:slots]),
                     queue, jnp.sum(defer, dtype=jnp.int32))
    out, length, counters = seq_merge(defer, (first.out, first.length, first.counters),
                                      (second.out, second.length, second.counters))
    steps = first.slots.step + second.slots.step
  counters = counters.replace(output_tokens=length)
  return DecodeResult(tokens=out[:, :max_len], lengths=length, counters=counters,
                      steps=jnp.full((n,), steps, jnp.int32))


def jit_on_mesh(fn, mesh):
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


def _models(d_config, v_config):
  return tuple(None if c is None else contract.model_for(c) for c in (d_config, v_config))


def compiled_stream(d_config, v_config, spec: DecodeSpec,
                    slots: int, mesh=None, shape: tuple[int, int] | None = None):
  """The jitted `decode_stream` for one (models, spec, slots[, input shape]); with a
  data-parallel mesh, each device streams its share of the examples through slots / D rows
  (`jit_on_mesh`). Kept in the bounded `programs.PROGRAMS` cache, one entry per shape given."""
  size = 1 if mesh is None else mesh.shape["data"]
  return programs.PROGRAMS.get(
      ("stream", d_config, v_config, spec, slots, mesh, shape),
      lambda: jit_on_mesh(functools.partial(decode_stream, *_models(d_config, v_config), spec,
                                     slots // size), mesh))


def compiled_decode(d_config, v_config, spec: DecodeSpec,
                    mesh=None, shape: tuple[int, int] | None = None):
  """The jitted `decode` for one (models, spec[, data-parallel mesh: `jit_on_mesh`][, input shape]),
  kept in the bounded `programs.PROGRAMS` cache so repeated calls reuse it. `generate` passes
  the (bucketed) shape, so each cache entry holds one compiled program."""
  return programs.PROGRAMS.get(
      ("decode", d_config, v_config, spec, mesh, shape),
      lambda: jit_on_mesh(functools.partial(decode, *_models(d_config, v_config), spec), mesh))


# ----------------------------------------------------------------------------------------------