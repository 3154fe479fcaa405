"""T5 (v1.0 and v1.1) in Flax, T5X's parameter tree, decoding blocks at per-row offsets.

The module (`Transformer`) holds the network; the model (`T5Model`) holds the
config and the pure functions the rest of the library calls:

    model = T5Model(get_config("tiny"))
    params = model.init_params(jax.random.key(0))
    encoded, enc_mask = model.encode(params, inputs)                 # once per batch
    cache = model.init_cache(params, encoded, enc_mask, max_length)   # cross k/v kept
    logits, cache = model.decode_block(params, cache, tokens, offsets)  # [B, k, V]

`decode_block` scores k >= 1 new tokens per row, row b's block starting at
decoder position offsets[b]. Keys/values are written with
`layers.write_block` at the row's offset (never added), and a query at
position t attends only to slots <= t, so a rejected draft is rolled back by
simply decoding again from an earlier offset: the stale slots are overwritten
before any query can see them.

Decoder positions: position 0 holds BOS (id 0); the logits at position t
predict the target token t.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade.models import layers
from spec_cascade.models.configs import T5Config

Array = jax.Array
Params = Any


@flax.struct.dataclass
class DecoderCache:
  """Per-layer decoder state for one batch.

  self_k / self_v: tuples (one per decoder layer) of keys [B, H, D, L] and values
    [B, H, L, D] — self-attention keys/values for decoder positions 0..L-1 (slots
    past a row's length hold junk that is always masked). These are the layouts the
    attention matmuls read without a copy (layers.dot_product_attention).
  cross_k / cross_v: tuples of [B, H, D, S] and [B, H, S, D] — encoder-decoder keys/values,
    computed once from the encoder output.
  encoder_mask: [B, S] bool — valid encoder positions.
  """
  self_k: tuple[Array, ...]
  self_v: tuple[Array, ...]
  cross_k: tuple[Array, ...]
  cross_v: tuple[Array, ...]
  encoder_mask: Array

  @property
  def max_length(self) -> int:
    return self.self_v[0].shape[2]

  @property
  def batch_size(self) -> int:
    return self.encoder_mask.shape[0]


def _dtype(cfg: T5Config):
  return jnp.dtype(cfg.dtype)


def _mm(cfg: T5Config):
  """The dtype the dense layers' matmuls take their inputs in (None: the activations')."""
  return None if cfg.matmul_dtype is None else jnp.dtype(cfg.matmul_dtype)


def _padding_bias(mask: Array) -> Array:
  """mask [B, K] bool → additive bias [B, 1, 1, K]."""
  return jnp.where(mask, 0.0, layers._NEG_INF)[:, None, None, :].astype(jnp.float32)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg, dt = self.config, _dtype(self.config)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(x)
    h = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.emb_dim, dt, _mm(cfg),
                                  name="attention")(h, h, bias)
    x = x + drop(h, deterministic=deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
    h = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.emb_dim, cfg.dropout_rate, dt,
                        _mm(cfg), name="mlp")(h, deterministic)
    return x + drop(h, deterministic=deterministic)


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool = True) -> Array:
    """tokens [B, S] int (0 = padding) → encoded [B, S, d]."""
    cfg, dt = self.config, _dtype(self.config)
    mask = tokens > 0
    pos = jnp.arange(tokens.shape[1])
    bias = layers.RelativePositionBiases(cfg.relpos_num_buckets, cfg.relpos_max_distance,
                                         cfg.num_heads, True, dt, name="relpos_bias")(pos, pos)
    bias = bias + _padding_bias(mask)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = drop(self.shared_embedding(tokens), deterministic=deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="encoder_norm")(x)
    return drop(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg, dt = self.config, _dtype(self.config)
    eps = cfg.layer_norm_epsilon
    self.pre_self_attention_layer_norm = layers.RMSNorm(eps, dt)
    self.self_attention = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim,
                                                    cfg.emb_dim, dt, _mm(cfg))
    self.pre_cross_attention_layer_norm = layers.RMSNorm(eps, dt)
    self.encoder_decoder_attention = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim,
                                                               cfg.emb_dim, dt, _mm(cfg))
    self.pre_mlp_layer_norm = layers.RMSNorm(eps, dt)
    self.mlp = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.emb_dim,
                               cfg.dropout_rate, dt, _mm(cfg))
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def cross_kv(self, encoded: Array) -> tuple[Array, Array]:
    return self.encoder_decoder_attention.project_kv(encoded)

  def __call__(self, x, self_bias, cross_k, cross_v, cross_bias, cache_kv=None,
               offsets=None, deterministic=True):
    """x [B, Q, d]. Without cache_kv, self-attention runs over x itself
    (teacher forcing); with cache_kv = (k [B, H, D, L], v [B, H, L, D]) the block's
    keys and values are written at `offsets` [B] and attention runs over the whole
    cache.
    Returns (x, (k, v))."""
    h = self.pre_self_attention_layer_norm(x)
    q = self.self_attention.project_q(h)
    k, v = self.self_attention.project_kv(h)
    if cache_kv is not None:
      # Per row: keys [H, D, L] take the block at column o, values [H, L, D] at row o.
      k = layers.write_block(cache_kv[0], k, offsets, 3)
      v = layers.write_block(cache_kv[1], v, offsets, 2)
    h = self.self_attention.attend(q, k, v, self_bias)
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.pre_cross_attention_layer_norm(x)
    h = self.encoder_decoder_attention.attend(
        self.encoder_decoder_attention.project_q(h), cross_k, cross_v, cross_bias)
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self.pre_mlp_layer_norm(x), deterministic)
    return x + self.dropout(h, deterministic=deterministic), (k, v)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  def setup(self):
    cfg, dt = self.config, _dtype(self.config)
    self.relpos_bias = layers.RelativePositionBiases(
        cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.num_heads, False, dt)
    self.layers = [DecoderLayer(cfg)
                   for i in range(cfg.num_decoder_layers)]
    self.decoder_norm = layers.RMSNorm(cfg.layer_norm_epsilon, dt)
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.Dense(
          cfg.vocab_size, nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
          dt, _mm(cfg))

  def cross_kv(self, encoded: Array):
    """encoded [B, S, d] → per-layer tuples of keys [B, H, D, S], values [B, H, S, D]."""
    kvs = [layer.cross_kv(encoded) for layer in self.layers]
    return tuple(k for k, _ in kvs), tuple(v for _, v in kvs)

  def _logits(self, x, deterministic):
    cfg = self.config
    x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x) / np.sqrt(cfg.emb_dim)
    else:
      logits = self.logits_dense(x)
    return logits.astype(jnp.float32)

  def _stack(self, tokens, self_bias, cross_k, cross_v, cross_bias, cache_kv, offsets,
             deterministic):
    x = self.dropout(self.shared_embedding(tokens), deterministic=deterministic)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i])
      x, (k, v) = layer(x, self_bias, cross_k[i], cross_v[i], cross_bias, kv, offsets,
                        deterministic)
      new_k.append(k)
      new_v.append(v)
    return self._logits(x, deterministic), (tuple(new_k), tuple(new_v))

  def __call__(self, encoded, encoder_mask, decoder_input_tokens, deterministic=True):
    """Teacher forcing: decoder_input_tokens [B, T] → logits [B, T, V]."""
    t = decoder_input_tokens.shape[1]
    pos = jnp.arange(t)
    causal = jnp.where(pos[None, :] <= pos[:, None], 0.0, layers._NEG_INF)
    self_bias = self.relpos_bias(pos, pos) + causal[None, None]
    cross_k, cross_v = self.cross_kv(encoded)
    logits, _ = self._stack(decoder_input_tokens, self_bias, cross_k, cross_v,
                            _padding_bias(encoder_mask), None, None, deterministic)
    return logits

  def decode_block(self, tokens, offsets, cache: DecoderCache):
    """tokens [B, k] at positions offsets[b] + (0..k-1) → logits [B, k, V], cache."""
    length = cache.max_length
    query_pos = offsets[:, None] + jnp.arange(tokens.shape[1])[None, :]  # [B, k]
    memory_pos = jnp.arange(length)
    visible = memory_pos[None, None, :] <= query_pos[:, :, None]  # [B, k, L]
    self_bias = (self.relpos_bias(query_pos, memory_pos)
                 + jnp.where(visible, 0.0, layers._NEG_INF)[:, None])
    logits, (new_k, new_v) = self._stack(
        tokens, self_bias, cache.cross_k, cache.cross_v, _padding_bias(cache.encoder_mask),
        (cache.self_k, cache.self_v), offsets, True)
    return logits, cache.replace(self_k=new_k, self_v=new_v)


class Transformer(nn.Module):
  """T5 encoder-decoder: `token_embedder`, `encoder`, `decoder` (T5X names)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, _dtype(cfg), _mm(cfg))
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, deterministic=True):
    return self.encoder(encoder_input_tokens, deterministic)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, deterministic=True):
    encoded = self.encoder(encoder_input_tokens, deterministic)
    return self.decoder(encoded, encoder_input_tokens > 0, decoder_input_tokens,
                        deterministic)

  def cross_kv(self, encoded):
    return self.decoder.cross_kv(encoded)

  def decode_block(self, tokens, offsets, cache):
    return self.decoder.decode_block(tokens, offsets, cache)


# ---------------------------------------------------------------------------
# Validation helpers: they run at trace time, on static shapes and dtypes.

def _check_tokens(name: str, x, rank: int = 2):
  if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer token array of rank {rank}, got dtype "
                     f"{getattr(x, 'dtype', type(x).__name__)}.")
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank} ([batch, length]), got shape {x.shape}.")


class T5Model:
  """The config plus pure functions over a parameter tree (the model/module split)."""

  def __init__(self, config: T5Config):
    if not isinstance(config, T5Config):
      raise ValueError(f"T5Model needs a T5Config, got {type(config).__name__}.")
    self.config = config
    self.module = Transformer(config)

  def __repr__(self):
    return f"T5Model({self.config})"

  # -- parameters ----------------------------------------------------------------
  def init_params(self, rng: Array, input_length: int = 4, target_length: int = 4) -> Params:
    """Random float32 parameters (T5X initializers)."""
    enc = jnp.ones((1, input_length), jnp.int32)
    dec = jnp.ones((1, target_length), jnp.int32)
    return jax.jit(lambda r: self.module.init(r, enc, dec)["params"])(rng)

  def abstract_params(self) -> Params:
    """ShapeDtypeStructs of the parameter tree, without allocating it."""
    enc = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(lambda r, e, d: self.module.init(r, e, d)["params"],
                          jax.random.key(0), enc, enc)

  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.abstract_params())))

  def check_params(self, params: Params) -> None:
    """Raises ValueError naming the first parameter whose path or shape differs."""
    expected = _flatten(self.abstract_params())
    got = _flatten(params)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
      raise ValueError(
          f"Parameters do not match {self.config}: missing {missing[:5]}"
          f"{' …' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
          f"{' …' if len(extra) > 5 else ''}.")
    for path, want in expected.items():
      if tuple(got[path].shape) != tuple(want.shape):
        raise ValueError(f"Parameter {path} has shape {tuple(got[path].shape)}, the config "
                         f"expects {tuple(want.shape)}.")

  # -- forward passes ------------------------------------------------------------
  def forward(self, params: Params, encoder_input_tokens: Array, decoder_input_tokens: Array,
              *, dropout_rng: Array | None = None) -> Array:
    """Teacher-forced logits [B, T, V] float32; dropout on when dropout_rng is given."""
    _check_tokens("encoder_input_tokens", encoder_input_tokens)
    _check_tokens("decoder_input_tokens", decoder_input_tokens)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                             deterministic=dropout_rng is None, rngs=rngs)

  def encode(self, params: Params, encoder_input_tokens: Array) -> tuple[Array, Array]:
    """encoder_input_tokens [B, S] (0 = padding) → encoded [B, S, d], mask [B, S] bool."""
    _check_tokens("encoder_input_tokens", encoder_input_tokens)
    encoded = self.module.apply({"params": params}, encoder_input_tokens,
                                method=Transformer.encode)
    return encoded, encoder_input_tokens > 0

  def init_cache(self, params: Params, encoded: Array, encoder_mask: Array,
                 max_length: int) -> DecoderCache:
    """An empty decoder cache for max_length positions, cross keys/values filled."""
    cfg = self.config
    if encoded.ndim != 3 or encoded.shape[-1] != cfg.emb_dim:
      raise ValueError(f"encoded must be [batch, length, {cfg.emb_dim}], got {encoded.shape}.")
    if encoder_mask.shape != encoded.shape[:2]:
      raise ValueError(f"encoder_mask must be {encoded.shape[:2]}, got {encoder_mask.shape}.")
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
      raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
    cross_k, cross_v = self.module.apply({"params": params}, encoded,
                                         method=Transformer.cross_kv)
    b = encoded.shape[0]
    k_shape = (b, cfg.num_heads, cfg.head_dim, int(max_length))
    v_shape = (b, cfg.num_heads, int(max_length), cfg.head_dim)
    zeros = lambda shape: tuple(jnp.zeros(shape, _dtype(cfg))
                                for _ in range(cfg.num_decoder_layers))
    return DecoderCache(self_k=zeros(k_shape), self_v=zeros(v_shape), cross_k=cross_k,
                        cross_v=cross_v,
                        encoder_mask=encoder_mask.astype(bool))

  def decode_block(self, params: Params, cache: DecoderCache, tokens: Array,
                   offsets: Array) -> tuple[Array, DecoderCache]:
    """Scores k new tokens per row.

    tokens [B, k] int: decoder inputs at positions offsets[b] .. offsets[b]+k-1.
    offsets [B] int: each row's first new position; requires offsets + k <= L
      (the caller keeps this: `decode_block` cannot raise on traced values, and
      dynamic_update_slice would clamp an overflowing write).
    Returns logits [B, k, V] float32 (row b, index i predicts position
    offsets[b]+i+1's token) and the cache with the block's keys/values written.
    """
    _check_tokens("tokens", tokens)
    if offsets.ndim != 1 or offsets.shape[0] != tokens.shape[0]:
      raise ValueError(f"offsets must have shape [batch]=({tokens.shape[0]},), got "
                       f"{offsets.shape}.")
    if not jnp.issubdtype(offsets.dtype, jnp.integer):
      raise ValueError(f"offsets must be integer, got {offsets.dtype}.")
    if tokens.shape[0] != cache.batch_size:
      raise ValueError(f"tokens batch {tokens.shape[0]} != cache batch {cache.batch_size}.")
    if tokens.shape[1] > cache.max_length:
      raise ValueError(f"Block of k={tokens.shape[1]} tokens does not fit a cache of "
                       f"max_length={cache.max_length}; allocate a longer cache.")
    return self.module.apply({"params": params}, tokens, offsets.astype(jnp.int32), cache,
                             method=Transformer.decode_block)


def _flatten(tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def shift_right(targets: Array) -> Array:
  """Decoder inputs from targets [B, T]: BOS (0) then targets[:, :-1]."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
