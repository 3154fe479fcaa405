"""Decoder-only transformers (Llama, Gemma, Gemma 2, Qwen2) in Flax, T5X-style parameter tree.

The module (`DecoderOnly`) holds the network; the model (`DecoderOnlyModel`) holds the config
and the pure functions an engine calls, mirroring `T5Model`:

    model = DecoderOnlyModel(get_decoder_config("gemma_2b"))
    params = model.init_params(jax.random.key(0))
    last_logits, cache = model.prefill(params, prompts, lengths, max_length)  # [B, V]
    logits, cache = model.decode_block(params, cache, tokens, offsets)         # [B, k, V]
    cache = model.rollback(cache, lengths)                                     # per-row

Prompts are RIGHT-padded: row b's prompt is prompts[b, :lengths[b]], so a token's cache slot
is its position (its RoPE angle) and every row's continuation starts at slot lengths[b].
Hugging Face pads decoder-only prompts on the left and derives positions from the attention
mask; both give each real token the same position and the same visible context, so logits
agree (tests/test_decoder_only.py checks greedy generations against HF's left-padded
`generate`).

Rolling back is a length update. The cache keeps each row's length, and `decode_block`
writes its block at the row's offset (default: that length) with dynamic_update_slice; a
query at position t sees only slots <= t (and, on sliding layers, > t - window). So slots
past a row's length — padding written by prefill, or a rejected draft — are overwritten
before any query can see them, and `rollback` need not clear anything.

Parameter tree (kernels [in, out], T5X's decoder-only names, so parallel.py's rules shard
it): token_embedder/embedding [V, d]; decoder/layers_i/{pre_self_attention_layer_norm,
self_attention/{query,key,value,out}, [post_self_attention_layer_norm], pre_mlp_layer_norm,
mlp/{wi_0 (gate), wi_1 (up), wo}, [post_mlp_layer_norm]}; decoder/decoder_norm;
decoder/logits_dense (untied only). RoPE uses the half-split ("rotate_half") pairing of
Hugging Face's checkpoints, so their q/k weights load without a permutation.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade.models import cpu_kernels, layers
from spec_cascade.models.decoder_configs import DecoderConfig, rope_inverse_frequencies
# Shared with T5 (they read only a config's .dtype / .matmul_dtype, or a tree).
from spec_cascade.models.t5 import _check_tokens, _dtype, _flatten, _mm

Array = jax.Array
Params = Any


@flax.struct.dataclass
class KVCache:
  """Per-layer self-attention state for one batch.

  k / v: tuples (one per layer) of keys [B, Hkv, D, L] and values [B, Hkv, L, D] — RoPE'd
    keys and values for positions 0..L-1 (the layouts layers.dot_product_attention
    explains). Slots at or past a row's length hold junk that no query sees.
  lengths: [B] int32 — how many leading slots of each row are valid; `decode_block`'s
    default offsets, advanced by it, and what `rollback` sets.
  """
  k: tuple[Array, ...]
  v: tuple[Array, ...]
  lengths: Array

  @property
  def max_length(self) -> int:
    return self.v[0].shape[2]

  @property
  def batch_size(self) -> int:
    return self.lengths.shape[0]


def _softcap(x: Array, cap: float | None) -> Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


class RMSNorm(nn.Module):
  """RMSNorm in float32; scales by w (Llama, Qwen2) or by 1 + w (Gemma, whose w starts at 0)."""
  epsilon: float
  plus_one: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(layers.mean_square(x32) + self.epsilon)
    return (x32 * (1.0 + scale if self.plus_one else scale)).astype(self.dtype)


class DenseBias(nn.Module):
  """layers.Dense plus an optional float32 bias [out] (Qwen2's q/k/v projections)."""
  features: int
  use_bias: bool
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kinit = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    kernel = self.param("kernel", kinit, (x.shape[-1], self.features), jnp.float32)
    y = layers.matmul(x, kernel, self.dtype, self.matmul_dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """x [B, Q, H, D], positions [B, Q] → x rotated, half-split pairing (dim i with i + D/2).

  Angles in float32 as HF computes them, so long positions keep their precision in bf16.
  """
  angles = positions[:, :, None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]  # [B, Q, 1, D/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def attention_bias(query_pos: Array, memory_pos: Array, window: int | None) -> Array:
  """query_pos [B, Q], memory_pos [B, K] → additive float32 bias [B, 1, 1, Q, K].

  Causal (memory position <= query position) and, with a window, memory position >
  query position - window (HF's sliding window: the query and window - 1 before it).
  """
  q, m = query_pos[:, :, None], memory_pos[:, None, :]
  visible = m <= q
  if window is not None:
    visible &= m > q - window
  return jnp.where(visible, 0.0, layers._NEG_INF)[:, None, None].astype(jnp.float32)  # pylint: disable=protected-access


def _grouped_attention(q: Array, k: Array, v: Array, bias: Array) -> Array:
  """XLA's ops for `cpu_kernels.attend` with key/value heads shared by groups of query heads:
  q [B, Q, H, D] (scaled), k [B, Hkv, D, K], v [B, Hkv, K, D], bias [B, 1, Q, K] → [B, Q, H, D]
  float32 (its derivatives are the kernel's)."""
  groups = q.shape[2] // k.shape[1]
  return layers._xla_attention(q, jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1),  # pylint: disable=protected-access
                               bias, jnp.float32)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE: `query` [d, H*D], `key`/`value` [d, Hkv*D],
  `out` [H*D, d]. Query head h reads key/value head h // (H / Hkv), as HF's repeat_kv."""
  config: DecoderConfig

  def setup(self):
    cfg, dt = self.config, _dtype(self.config)
    dense = lambda n, bias: DenseBias(n, bias, dt, _mm(cfg))
    self.query = dense(cfg.num_heads * cfg.head_dim, cfg.qkv_bias)
    self.key = dense(cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias)
    self.value = dense(cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias)
    self.out = dense(cfg.emb_dim, False)

  def __call__(self, x, positions, bias, cache_kv=None, offsets=None):
    """x [B, Q, d] at positions [B, Q]; bias [B, 1, 1, Q, K].

    Without cache_kv the block attends to itself (K = Q); with cache_kv = (k [B, Hkv, D, L],
    v [B, Hkv, L, D]) its keys/values are written at `offsets` [B] first and it attends to
    the whole cache (K = L). Returns (out [B, Q, d], (k, v))."""
    cfg = self.config
    b, q_len = x.shape[:2]
    inv_freq = np.asarray(rope_inverse_frequencies(cfg), np.float32)
    split = lambda y, h: y.reshape(b, q_len, h, cfg.head_dim)
    q = apply_rope(split(self.query(x), cfg.num_heads), positions, inv_freq)
    k = apply_rope(split(self.key(x), cfg.num_kv_heads), positions, inv_freq)
    k = jnp.transpose(k, (0, 2, 3, 1))  # [B, Hkv, D, Q]
    v = jnp.transpose(split(self.value(x), cfg.num_kv_heads), (0, 2, 1, 3))  # [B, Hkv, Q, D]
    if cache_kv is not None:
      # Per row: keys [Hkv, D, L] take the block at column o, values [Hkv, L, D] at row o.
      k = layers.write_block(cache_kv[0], k, offsets, 3)
      v = layers.write_block(cache_kv[1], v, offsets, 2)
    if cfg.attn_logit_softcap is None:
      # A step's or verify call's few queries: one CPU kernel call (layers.dot_product_attention).
      q_scaled = q * jnp.asarray(cfg.query_scale, q.dtype)
      if cpu_kernels.attention_applies(q_scaled, k, v, bias[:, 0]):
        out = cpu_kernels.attend(q_scaled, k, v, bias[:, 0], _grouped_attention)
        return self.out(out.reshape(b, q_len, -1).astype(_dtype(cfg))), (k, v)
    groups = cfg.num_heads // cfg.num_kv_heads
    qg = jnp.transpose(q, (0, 2, 1, 3)).reshape(b, cfg.num_kv_heads, groups, q_len,
                                                cfg.head_dim)
    logits = jnp.einsum("bkgqd,bkdl->bkgql", qg, k.astype(qg.dtype),
                        preferred_element_type=jnp.float32) * cfg.query_scale
    logits = _softcap(logits, cfg.attn_logit_softcap) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(_dtype(cfg))
    out = jnp.einsum("bkgql,bkld->bkgqd", weights, v.astype(weights.dtype))
    out = jnp.transpose(out.reshape(b, cfg.num_heads, q_len, cfg.head_dim), (0, 2, 1, 3))
    return self.out(out.reshape(b, q_len, -1)), (k, v)


class DecoderLayer(nn.Module):
  config: DecoderConfig

  def setup(self):
    cfg, dt = self.config, _dtype(self.config)
    norm = lambda: RMSNorm(cfg.layer_norm_epsilon, cfg.norm_scale_plus_one, dt)
    self.pre_self_attention_layer_norm = norm()
    self.self_attention = Attention(cfg)
    self.pre_mlp_layer_norm = norm()
    self.mlp = layers.MlpBlock(cfg.mlp_dim, (cfg.mlp_activation, "linear"), cfg.emb_dim,
                               0.0, dt, _mm(cfg))
    if cfg.post_norms:
      self.post_self_attention_layer_norm = norm()
      self.post_mlp_layer_norm = norm()

  def __call__(self, x, positions, bias, cache_kv=None, offsets=None):
    """x [B, Q, d] → (x, (k, v)); see Attention for the cache."""
    post = self.config.post_norms
    h, kv = self.self_attention(self.pre_self_attention_layer_norm(x), positions, bias,
                                cache_kv, offsets)
    x = x + (self.post_self_attention_layer_norm(h) if post else h)
    h = self.mlp(self.pre_mlp_layer_norm(x))
    return x + (self.post_mlp_layer_norm(h) if post else h), kv


class DecoderStack(nn.Module):
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_layers)]
    self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, cfg.norm_scale_plus_one, _dtype(cfg))
    if not cfg.tie_embeddings:
      self.logits_dense = layers.Dense(
          cfg.vocab_size, nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
          _dtype(cfg), _mm(cfg))

  def __call__(self, x, positions, memory_pos, cache_kv, offsets):
    """x [B, Q, d] embedded tokens at positions [B, Q]; memory_pos [B, K] the positions of
    the keys attended to. → normed hidden [B, Q, d], per-layer (k, v) tuples."""
    cfg = self.config
    biases = {w: attention_bias(positions, memory_pos, w)
              for w in {cfg.sliding_window if cfg.is_sliding(i) else None
                        for i in range(cfg.num_layers)}}
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i])
      bias = biases[cfg.sliding_window if cfg.is_sliding(i) else None]
      x, (k, v) = layer(x, positions, bias, kv, offsets)
      new_k.append(k)
      new_v.append(v)
    return self.decoder_norm(x), (tuple(new_k), tuple(new_v))


class DecoderOnly(nn.Module):
  """`token_embedder` and `decoder` (T5X decoder-only names)."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, _dtype(cfg), _mm(cfg))
    self.decoder = DecoderStack(cfg)

  def _embed(self, tokens):
    x = self.token_embedder(tokens)
    if self.config.scale_embeddings:
      # HF rounds sqrt(d) to the activation dtype first (55.43 → 55.5 in bfloat16 for d=3072).
      x = x * jnp.asarray(np.sqrt(self.config.emb_dim), x.dtype)
    return x

  def logits(self, hidden):
    """hidden [..., d] (normed) → float32 logits [..., V]."""
    cfg = self.config
    if cfg.tie_embeddings:
      out = self.token_embedder.attend(hidden)
    else:
      out = self.decoder.logits_dense(hidden)
    return _softcap(out.astype(jnp.float32), cfg.final_logit_softcap)

  def __call__(self, tokens):
    """Teacher forcing from position 0: tokens [B, T] → logits [B, T, V]."""
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = self.decoder(self._embed(tokens), pos, pos, None, None)
    return self.logits(hidden)

  def decode_block(self, tokens, offsets, cache: KVCache, last_index=None):
    """tokens [B, k] at positions offsets[b] + (0..k-1) → logits, cache with the block
    written and lengths = offsets + k. logits: [B, k, V], or [B, V] at block index
    last_index [B] when given (prefill: only the prompt's last position is needed)."""
    positions = offsets[:, None] + jnp.arange(tokens.shape[1])[None, :]
    memory_pos = jnp.broadcast_to(jnp.arange(cache.max_length), (tokens.shape[0],
                                                                 cache.max_length))
    hidden, (k, v) = self.decoder(self._embed(tokens), positions, memory_pos,
                                  (cache.k, cache.v), offsets)
    if last_index is not None:
      hidden = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0]
    return self.logits(hidden), KVCache(k=k, v=v, lengths=offsets + tokens.shape[1])


def _check_rows(name: str, x, batch: int):
  if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array [batch], got "
                     f"{getattr(x, 'dtype', type(x).__name__)}.")
  if x.shape != (batch,):
    raise ValueError(f"{name} must have shape [batch]=({batch},), got {x.shape}.")


class DecoderOnlyModel:
  """The config plus pure functions over a parameter tree (the model/module split)."""

  def __init__(self, config: DecoderConfig):
    if not isinstance(config, DecoderConfig):
      raise ValueError(f"DecoderOnlyModel needs a DecoderConfig, got {type(config).__name__}.")
    self.config = config
    self.module = DecoderOnly(config)

  def __repr__(self):
    return f"DecoderOnlyModel({self.config})"

  # -- parameters ----------------------------------------------------------------
  def init_params(self, rng: Array) -> Params:
    """Random float32 parameters."""
    tokens = jnp.ones((1, 4), jnp.int32)
    return jax.jit(lambda r: self.module.init(r, tokens)["params"])(rng)

  def abstract_params(self) -> Params:
    """ShapeDtypeStructs of the parameter tree, without allocating it."""
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(lambda r, t: self.module.init(r, t)["params"], jax.random.key(0),
                          tokens)

  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.abstract_params())))

  def check_params(self, params: Params) -> None:
    """Raises ValueError naming the first parameter whose path or shape differs."""
    expected, got = _flatten(self.abstract_params()), _flatten(params)
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
      raise ValueError(f"Parameters do not match {self.config}: missing {missing[:5]}, "
                       f"unexpected {extra[:5]}.")
    for path, want in expected.items():
      if tuple(got[path].shape) != tuple(want.shape):
        raise ValueError(f"Parameter {path} has shape {tuple(got[path].shape)}, the config "
                         f"expects {tuple(want.shape)}.")

  # -- forward passes ------------------------------------------------------------
  def forward(self, params: Params, tokens: Array) -> Array:
    """Teacher-forced logits [B, T, V] float32 for tokens [B, T] at positions 0..T-1.

    Right padding is harmless (a position never sees later ones); the logits at padded
    positions are junk."""
    _check_tokens("tokens", tokens)
    return self.module.apply({"params": params}, tokens)

  def init_cache(self, batch_size: int, max_length: int) -> KVCache:
    """An empty cache (all lengths 0) for max_length positions per row."""
    cfg = self.config
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    b, n = int(batch_size), int(max_length)
    zeros = lambda shape: tuple(jnp.zeros(shape, _dtype(cfg)) for _ in range(cfg.num_layers))
    return KVCache(k=zeros((b, cfg.num_kv_heads, cfg.head_dim, n)),
                   v=zeros((b, cfg.num_kv_heads, n, cfg.head_dim)),
                   lengths=jnp.zeros((b,), jnp.int32))

  def prefill(self, params: Params, prompts: Array, lengths: Array,
              max_length: int) -> tuple[Array, KVCache]:
    """Runs right-padded prompts into a fresh cache.

    prompts [B, P] int: row b's prompt is prompts[b, :lengths[b]] (the rest is ignored).
    lengths [B] int, 1 <= lengths[b] <= P (not checked on traced values).
    max_length: the cache's positions per row, >= P (prompt plus everything decoded).
    Returns the logits at each row's last prompt token [B, V] float32 (the distribution
    of the token at position lengths[b]) and the cache with cache.lengths = lengths.
    """
    _check_tokens("prompts", prompts)
    _check_rows("lengths", lengths, prompts.shape[0])
    if isinstance(max_length, (int, np.integer)) and max_length < prompts.shape[1]:
      raise ValueError(f"max_length={max_length} is shorter than the padded prompts "
                       f"({prompts.shape[1]}).")
    cache = self.init_cache(prompts.shape[0], max_length)
    last = jnp.maximum(lengths.astype(jnp.int32) - 1, 0)
    logits, cache = self.module.apply(
        {"params": params}, prompts, jnp.zeros_like(cache.lengths), cache, last,
        method=DecoderOnly.decode_block)
    return logits, cache.replace(lengths=lengths.astype(jnp.int32))

  def decode_block(self, params: Params, cache: KVCache, tokens: Array,
                   offsets: Array | None = None) -> tuple[Array, KVCache]:
    """Scores k new tokens per row.

    tokens [B, k] int at positions offsets[b] .. offsets[b]+k-1.
    offsets [B] int (default cache.lengths): requires offsets + k <= L (the caller keeps
      this: traced values cannot raise, and dynamic_update_slice would clamp the write).
    Returns logits [B, k, V] float32 (index i predicts position offsets[b]+i+1) and the
    cache with the block written and lengths = offsets + k.
    """
    _check_tokens("tokens", tokens)
    if tokens.shape[0] != cache.batch_size:
      raise ValueError(f"tokens batch {tokens.shape[0]} != cache batch {cache.batch_size}.")
    if tokens.shape[1] > cache.max_length:
      raise ValueError(f"Block of k={tokens.shape[1]} tokens does not fit a cache of "
                       f"max_length={cache.max_length}; allocate a longer cache.")
    offsets = cache.lengths if offsets is None else offsets
    _check_rows("offsets", offsets, tokens.shape[0])
    return self.module.apply({"params": params}, tokens, offsets.astype(jnp.int32), cache,
                             method=DecoderOnly.decode_block)

  @staticmethod
  def rollback(cache: KVCache, lengths: Array) -> KVCache:
    """The cache with row b truncated to lengths[b] [B] (e.g. offset + accepted drafts).

    Nothing is cleared: the next block is written at the new length and overwrites the
    stale slots before any query can see them."""
    _check_rows("lengths", lengths, cache.batch_size)
    return cache.replace(lengths=lengths.astype(jnp.int32))
