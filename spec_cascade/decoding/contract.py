"""The model contract: all a decode loop asks of a drafter or a verifier.

Every method's body is written once against four calls, each a pure function of a `Bundle`
(model, params) and a per-row decoding state the loop carries (its "cache"):

  start(role, bundle, inputs [B, S], positions, encoded=None) → cache
      the context of each row, ready to score decoder positions 0 .. positions − 1
      (encoded: the other model's encoder output, when the two share it: `shares_encoder`)
  score(role, bundle, cache, tokens [B, k], offsets [B]) → (logits [B, k, V], cache)
      row b's tokens at decoder positions offsets[b] .. offsets[b] + k − 1; logits[:, i]
      is the distribution of the token at position offsets[b] + i + 1. Rolling back is
      scoring again from an earlier offset: what lies past it is overwritten before it is read.
  start_stream(role, bundle, inputs [N, S], first, positions) → (cache of inputs[first], pool)
  refill(bundle, cache, pool, slots, ids, count)
      continuous batching: slot slots[j] of `cache` takes example ids[j]'s context, j < count

The loops' positions are the output's: output token t sits at decoder position t + 1, and
position 0's input is "start of output" (the loops pass 0 there).

  T5 (`T5Model`): start = the encoder plus an empty decoder cache whose cross-attention keys
      and values are filled; position n is the decoder's position n (BOS = 0 at 0).
  Decoder-only (`DecoderOnlyModel`): inputs are right-padded prompts (0 = padding after the
      last token; prompts hold their own BOS). start prefills each row's prompt into a KV
      cache; position n is cache slot prompt_length − 1 + n, and position 0's input is the
      row's last prompt token. So output token 0 is predicted from the whole prompt, exactly
      as the model's own `prefill` then `decode_block` would, and every body, rule and
      counter is the same code for both families.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from spec_cascade.models.configs import T5Config
from spec_cascade.models.decoder_configs import DecoderConfig
from spec_cascade.models.decoder_only import DecoderOnlyModel, KVCache
from spec_cascade.models.t5 import DecoderCache, T5Model

Array = jax.Array


@flax.struct.dataclass
class PromptCache:
  """A decoder-only model's decoding state for a batch.

  kv: its KVCache [B, ..., S + L]; prompt_length: int32 [B] (≥ 1) real prompt tokens of each
  row; last_token: int32 [B] each row's last prompt token (the input at position 0)."""
  kv: KVCache
  prompt_length: Array
  last_token: Array


@flax.struct.dataclass
class PromptPool:
  """Every queued example's prompt, for `refill` (decoder-only models prefill on entry)."""
  prompts: Array  # int32 [N, S]
  lengths: Array  # int32 [N]


def is_decoder_only(model) -> bool:
  return isinstance(model, DecoderOnlyModel)


def model_for(config):
  """The model of a config: T5Config → T5Model, DecoderConfig → DecoderOnlyModel."""
  if isinstance(config, T5Config):
    return T5Model(config)
  if isinstance(config, DecoderConfig):
    return DecoderOnlyModel(config)
  raise TypeError(f"Not a model config: {config!r} (a T5Config or a DecoderConfig).")


# What a T5 encoder's output depends on besides its parameters.
_ENCODER_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "num_encoder_layers",
                   "mlp_dim", "mlp_activations", "dtype", "matmul_dtype", "relpos_num_buckets",
                   "relpos_max_distance", "layer_norm_epsilon")
_ENCODER_PARAMS = ("token_embedder", "encoder")
_shared_checked: dict[tuple, tuple[list, bool]] = {}


def shares_encoder(drafter, verifier) -> bool:
  """Whether two T5 Bundles encode every input alike: same encoder settings and the same
  values in their `token_embedder` and `encoder` parameters (e.g. a drafter cut from the
  verifier, `models.grow --keep_decoder_layers`, trained with those frozen). Then the engine
  encodes once (`DecodeSpec.shared_encoder`). Compared once per set of parameter arrays."""
  if drafter is None or verifier is None:
    return False
  if is_decoder_only(drafter.model) or is_decoder_only(verifier.model):
    return False
  dc, vc = drafter.model.config, verifier.model.config
  if any(getattr(dc, f) != getattr(vc, f) for f in _ENCODER_FIELDS):
    return False
  try:
    d = [drafter.params[k] for k in _ENCODER_PARAMS]
    v = [verifier.params[k] for k in _ENCODER_PARAMS]
  except (KeyError, TypeError):
    return False
  d_leaves, d_tree = jax.tree_util.tree_flatten(d)
  v_leaves, v_tree = jax.tree_util.tree_flatten(v)
  key = tuple(map(id, d_leaves)) + (None,) + tuple(map(id, v_leaves))
  if key in _shared_checked:
    return _shared_checked[key][1]
  def equal(a, b) -> bool:
    if a is b:
      return True
    if a.shape != b.shape or a.dtype != b.dtype:
      return False
    x, y = _local_value(a), _local_value(b)
    return x is not None and y is not None and bool((x == y).all())

  same = d_tree == v_tree and all(equal(a, b) for a, b in zip(d_leaves, v_leaves))
  if len(_shared_checked) >= 8:  # a few pairs per process; the leaves are kept so ids stay valid
    _shared_checked.pop(next(iter(_shared_checked)))
  _shared_checked[key] = (d_leaves + v_leaves, same)
  return same


def _local_value(x):
  """x's whole value on this host, or None where the host holds only part of it. In a pod
  (several processes) a replicated array's local copy is its value, so every process decides
  `shares_encoder` alike and compiles the same program; a sharded one is not compared."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return jax.device_get(x)
  if x.sharding.is_fully_replicated:
    return jax.device_get(x.addressable_shards[0].data)
  return None


def prompt_lengths(inputs: Array) -> Array:
  """int32 [B]: 1 + the index of each row's last non-zero token (at least 1)."""
  pos = jnp.arange(1, inputs.shape[1] + 1, dtype=jnp.int32)[None, :]
  return jnp.maximum(jnp.max(jnp.where(inputs != 0, pos, 0), axis=1), 1).astype(jnp.int32)


def encode(role: str, bundle, inputs: Array) -> tuple[Array, Array]:
  """A T5 model's (encoded [B, S, d], mask [B, S]) for inputs [B, S]."""
  model, params = bundle
  with jax.named_scope(f"encode_{role}"):
    return model.encode(params, inputs)


def start(role: str, bundle, inputs: Array, positions: int, encoded=None):
  """bundle's decoding state for inputs [B, S], room for decoder positions < positions.
  encoded: (encoded, mask) of these inputs from an encoder this T5 model shares
  (`shares_encoder`); None runs its own."""
  model, params = bundle
  with jax.named_scope(f"encode_{role}"):
    if not is_decoder_only(model):
      encoded, mask = model.encode(params, inputs) if encoded is None else encoded
      return model.init_cache(params, encoded, mask, positions)
    lengths = prompt_lengths(inputs)
    _, kv = model.prefill(params, inputs, lengths, inputs.shape[1] + positions)
    last = jnp.take_along_axis(inputs, (lengths - 1)[:, None], axis=1)[:, 0]
    return PromptCache(kv=kv, prompt_length=lengths, last_token=last.astype(jnp.int32))


def score(role: str, bundle, cache, tokens: Array, offsets: Array):
  """Logits of tokens [B, k] at decoder positions offsets [B] + 0..k−1, under a named scope
  so profiles (bench/profile_decode.py) attribute each op to the drafter or the verifier."""
  model, params = bundle
  with jax.named_scope(role):
    if not is_decoder_only(model):
      return model.decode_block(params, cache, tokens, offsets)
    at_start = (offsets[:, None] + jnp.arange(tokens.shape[1])[None, :]) == 0
    tokens = jnp.where(at_start, cache.last_token[:, None], tokens)
    logits, kv = model.decode_block(params, cache.kv, tokens, cache.prompt_length - 1 + offsets)
    return logits, cache.replace(kv=kv)


def batch_size(cache) -> int:
  return cache.kv.batch_size if isinstance(cache, PromptCache) else cache.batch_size


def start_stream(role: str, bundle, inputs: Array, first: Array, positions: int,
                 encoded=None):
  """(the decoding state of examples inputs[first] [B], the pool `refill` copies a new
  example's context from) for a stream over inputs [N, S]. T5 encodes the N inputs once and
  keeps every example's cross-attention keys / values; a decoder-only model keeps the prompts
  (prefilled when they enter a slot). encoded: as in `start`, for the N inputs."""
  model, params = bundle
  if is_decoder_only(model):
    return (start(role, bundle, inputs[first], positions),
            PromptPool(prompts=inputs, lengths=prompt_lengths(inputs)))
  with jax.named_scope(f"encode_{role}"):
    encoded, mask = model.encode(params, inputs) if encoded is None else encoded
  pool_ = model.init_cache(params, encoded, mask, 1)
  return model.init_cache(params, encoded[first], mask[first], positions), pool_


def _put_row(dst: Array, src: Array, src_row, dst_row) -> Array:
  return jax.lax.dynamic_update_slice_in_dim(
      dst, jax.lax.dynamic_slice_in_dim(src, src_row, 1, 0), dst_row, 0)


def refill(bundle, cache, pool_: Any, slot_ids: Array, new_ids: Array, count: Array):
  """`cache` with slot slot_ids[j] holding example new_ids[j]'s context, for j < count.

  A loop over the refilled slots only (usually none or one per step): a select over all
  slots would copy every layer's state at every step. A slot's self-attention entries are
  left as they are: positions past a row's length are overwritten before they are read."""
  if cache is None:
    return None
  model, params = bundle
  if not is_decoder_only(model):
    def put_t5(j, c: DecoderCache):
      row = lambda dst, src: jax.lax.dynamic_update_slice_in_dim(
          dst, jax.lax.dynamic_slice_in_dim(src, new_ids[j], 1, 0), slot_ids[j], 0)
      return c.replace(cross_k=tuple(map(row, c.cross_k, pool_.cross_k)),
                       cross_v=tuple(map(row, c.cross_v, pool_.cross_v)),
                       encoder_mask=row(c.encoder_mask, pool_.encoder_mask))
    return jax.lax.fori_loop(0, count, put_t5, cache)

  def put_prompt(j, c: PromptCache):
    prompt = jax.lax.dynamic_slice_in_dim(pool_.prompts, new_ids[j], 1, 0)
    length = jax.lax.dynamic_slice_in_dim(pool_.lengths, new_ids[j], 1, 0)
    _, one = model.prefill(params, prompt, length, c.kv.max_length)
    row = lambda dst, src: _put_row(dst, src, 0, slot_ids[j])
    kv = c.kv.replace(k=tuple(map(row, c.kv.k, one.k)), v=tuple(map(row, c.kv.v, one.v)),
                      lengths=row(c.kv.lengths, one.lengths))
    last = jnp.take_along_axis(prompt, (length - 1)[:, None], axis=1)[:, 0].astype(jnp.int32)
    return c.replace(kv=kv, prompt_length=row(c.prompt_length, length),
                     last_token=row(c.last_token, last))
  return jax.lax.fori_loop(0, count, put_prompt, cache)
