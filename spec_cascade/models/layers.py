"""T5 building blocks in Flax with T5X's parameter names and shapes.

Parameters are float32 and cast to the activation dtype at use; kernels of
projections are stored 2-D ([in, out]) as T5X stores `DenseGeneral` kernels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade.models import cpu_kernels

Array = jax.Array
Initializer = Callable[..., Array]

_NEG_INF = -1e10  # large finite: keeps fully masked rows NaN-free


def _act(name: str) -> Callable[[Array], Array]:
  return {
      "gelu": lambda x: nn.gelu(x, approximate=True),
      "gelu_new": lambda x: nn.gelu(x, approximate=True),
      "relu": nn.relu,
      "silu": nn.silu,
      "linear": lambda x: x,
  }[name]


def mean_square(x: Array) -> Array:
  """[..., d] float32 → [..., 1]: the mean of x² over the last axis, summed as a fixed tree of
  elementwise adds (halves of the zero-padded power-of-two width added until one is left).

  Why not jnp.mean: XLA's CPU reductions sum a row in an order that depends on the shape of
  the whole op (a [4, 1, 256] and a [4, 4, 256] norm gave the same row different last bits),
  so a verify call's norms differed from a one-token step's, and the models' logits with them;
  greedy speculative decoding then reproduced the verifier only up to near-ties (and with
  bfloat16 matmul inputs, which round those bits away or up, visibly). Elementwise adds are
  the same IEEE operation whatever the shape, so each row's sum is too."""
  sq = jnp.square(x)
  d = sq.shape[-1]
  width = 1 << max(d - 1, 0).bit_length()
  if width != d:
    sq = jnp.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(0, width - d)])
  while sq.shape[-1] > 1:
    half = sq.shape[-1] // 2
    sq = sq[..., :half] + sq[..., half:]
  return sq / d


class RMSNorm(nn.Module):
  """T5 layer norm: no mean subtraction, no bias, computed in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    var = mean_square(x32)
    return (x32 * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


def matmul(x: Array, w: Array, dtype: jnp.dtype, matmul_dtype: jnp.dtype | None,
           few_rows_kernel: bool = True) -> Array:
  """x @ w with both cast to matmul_dtype (default: dtype), accumulated in float32, → dtype.

  On a CPU, float32 products of 2-8 rows (a verify call's) go through
  `cpu_kernels.matmul`, which reads the weights once for all rows; few_rows_kernel=False keeps
  XLA's dot (for a `w` that is a transposed view, which the kernel would make XLA copy). A
  `cpu_kernels.StreamedKernel` w sends float32 products of 1-64 rows, and decode calls at any
  batch (`cpu_kernels.decode_shaped`), to the kernel with its bfloat16 twin (half the weight
  traffic, same values) and the rest to XLA with its float32. A `cpu_kernels.PairedKernel` w
  (matmul_dtype bfloat16) sends the same products to the paired kernel: bfloat16 inputs,
  exact products, float32 sums, as XLA's dot computes them.

  Asking for a float32 result keeps bfloat16 inputs on XLA CPU's fast kernels (a bf16 × bf16
  → bf16 dot is no faster there than float32; → float32 is 1.3–3× faster on a CPU with AMX /
  AVX512-BF16, bench/RESULTS.md) and accumulates in float32 on every backend, as TPUs do.
  """
  mm = dtype if matmul_dtype is None else matmul_dtype
  if isinstance(w, cpu_kernels.PairedKernel):
    # bfloat16 inputs: the paired kernel where it applies (AVX512-BF16), else XLA's dot.
    if few_rows_kernel and jnp.dtype(mm) == jnp.bfloat16 and cpu_kernels.paired_applies(
        x.astype(mm), w):
      return cpu_kernels.paired_matmul(x.astype(mm), w).astype(dtype)
    w = w.full
  if isinstance(w, cpu_kernels.StreamedKernel):
    # The same values twice: the bfloat16 twin where the kernel takes it (few rows), else
    # float32 for XLA.
    if few_rows_kernel and jnp.dtype(mm) == jnp.float32 and cpu_kernels.applies(x.astype(mm), w.bf16):
      return cpu_kernels.matmul(x.astype(mm), w.bf16).astype(dtype)
    w = w.f32
  x, w = x.astype(mm), w.astype(mm)
  if few_rows_kernel and cpu_kernels.applies(x, w):
    return cpu_kernels.matmul(x, w).astype(dtype)
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(dtype)


# Whether `write_block` writes a one-token block of a one-row cache with a select instead of
# dynamic_update_slice. Read at trace time; benchmarks turn it off to measure what it buys
# (bench/cache_write.py), nothing else should.
MASKED_ONE_TOKEN_WRITE = True


def write_block(cache: Array, block: Array, offsets: Array, axis: int) -> Array:
  """cache [B, ...] with block [B, ...] written along `axis` (the position axis, ≥ 1) at
  positions offsets[b] .. offsets[b] + k − 1 of row b (k = block.shape[axis]; the caller keeps
  offsets + k ≤ the cache's length). Returns the new cache, in the cache's dtype.

  A one-token block of a one-row cache (every decode step at batch 1) is written as a select
  over the whole cache: XLA's CPU backend turned the per-row dynamic_update_slice of such a
  step into a scatter and copied every layer's cache around it each step, which cost the
  verifier's batch-1 step 1.3-2x (bench/RESULTS.md, "A copy-free one-token step"). Blocks of
  several tokens and batches keep dynamic_update_slice, which did not lose there.
  """
  block = block.astype(cache.dtype)
  if MASKED_ONE_TOKEN_WRITE and cache.shape[0] == 1 and block.shape[axis] == 1:
    position = jax.lax.broadcasted_iota(jnp.int32, cache.shape, axis)
    return jnp.where(position == offsets.reshape((1,) * cache.ndim), block, cache)
  start = lambda o: tuple(o if a == axis - 1 else 0 for a in range(cache.ndim - 1))
  return jax.vmap(lambda c, u, o: jax.lax.dynamic_update_slice(c, u, start(o)))(
      cache, block, offsets)


class Dense(nn.Module):
  """x @ kernel with a 2-D float32 kernel [in, out] (T5X DenseGeneral layout)."""
  features: int
  kernel_init: Initializer
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: jnp.dtype | None = None  # see `matmul`

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        jnp.float32)
    return matmul(x, kernel, self.dtype, self.matmul_dtype)


class Embed(nn.Module):
  """Token embedding [V, d], also usable as a tied output layer (`attend`)."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: jnp.dtype | None = None  # of `attend`, see `matmul`

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: Array) -> Array:
    if cpu_kernels.lookup_applies(self.embedding, tokens):
      # A few tokens (a decode step's, a verify call's): XLA's CPU gather split them across
      # threads, costing a quarter of a step (bench/RESULTS.md).
      return cpu_kernels.take_rows(self.embedding, tokens).astype(self.dtype)
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return matmul(x, self.embedding.T, self.dtype, self.matmul_dtype, few_rows_kernel=False)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """T5's bucketing of (memory position - query position) into int32 buckets.

  Small distances get their own bucket; larger ones share log-spaced buckets up
  to `max_distance`. Bidirectional splits the buckets between the two signs.
  """
  n = -relative_position.astype(jnp.int32)
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # log of n >= 1 only; small n take the exact branch, so clamping is harmless.
  n_f = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(n_f / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBiases(nn.Module):
  """One table [heads, buckets] per stack, shared by its layers."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_pos: Array, memory_pos: Array) -> Array:
    """query_pos [B, Q] or [Q], memory_pos [K] → bias [B or 1, H, Q, K]."""
    table = self.param("rel_embedding",
                       nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                       (self.num_heads, self.num_buckets), jnp.float32)
    if query_pos.ndim == 1:
      query_pos = query_pos[None]
    rel = memory_pos[None, None, :] - query_pos[:, :, None]  # [B, Q, K]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(table, buckets, axis=1)  # [H, B, Q, K]
    return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)


def dot_product_attention(q: Array, k: Array, v: Array, bias: Array,
                          dtype: jnp.dtype) -> Array:
  """q [B, Q, H, D], k [B, H, D, K], v [B, H, K, D], bias [B|1, H|1, Q, K] → [B, Q, H, D].

  Keys and values are stored in the layouts the two batched matmuls read directly:
  with [B, K, H, D] XLA on CPU transposed the whole (cached) k and v at every decode
  step, which dominated the step time at batch 32 (bench/RESULTS.md).
  No 1/sqrt(D) scaling: T5 folds it into the query initializer. Softmax in
  float32 so bfloat16 activations do not lose the mask.

  On a CPU, float32 attention of a few queries (decode steps and verify calls) runs as one
  kernel call (`cpu_kernels.attend`) instead of XLA's 6-8 thunks per layer.
  """
  if jnp.dtype(dtype) == jnp.float32 and cpu_kernels.attention_applies(q, k, v, bias):
    return cpu_kernels.attend(q, k, v, bias, _xla_attention_f32)
  return _xla_attention(q, k, v, bias, dtype)


def _xla_attention(q: Array, k: Array, v: Array, bias: Array, dtype: jnp.dtype) -> Array:
  """`dot_product_attention` in XLA ops.

  Both matmuls keep heads leading ([B, H, Q, ·]) and only the small q and output are
  transposed: asking a dot for a [B, Q, H, D] result made XLA on CPU fall back to a slow
  kernel (3x slower attention for a 6-token verify block at batch 8, bench/RESULTS.md).
  """
  q = jnp.transpose(q, (0, 2, 1, 3))
  logits = jnp.einsum("bhqd,bhdk->bhqk", q, k, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1).astype(dtype)
  return jnp.transpose(jnp.einsum("bhqk,bhkd->bhqd", weights, v), (0, 2, 1, 3))


def _xla_attention_f32(q: Array, k: Array, v: Array, bias: Array) -> Array:
  return _xla_attention(q, k, v, bias, jnp.float32)


class MultiHeadAttention(nn.Module):
  """Projections `query`, `key`, `value` [d, H*D] and `out` [H*D, d]."""
  num_heads: int
  head_dim: int
  out_features: int
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: jnp.dtype | None = None  # of the projections, see `matmul`

  def setup(self):
    inner = self.num_heads * self.head_dim
    kinit = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    depth_scaling = float(np.sqrt(self.head_dim))

    def query_init(*args):
      return kinit(*args) / depth_scaling

    dense = lambda n, init: Dense(n, init, self.dtype, self.matmul_dtype)
    self.query = dense(inner, query_init)
    self.key = dense(inner, kinit)
    self.value = dense(inner, kinit)
    self.out = dense(self.out_features, kinit)

  def _split(self, x: Array) -> Array:
    return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

  def project_q(self, x: Array) -> Array:
    """x [B, Q, d] → [B, Q, H, D]."""
    return self._split(self.query(x))

  def project_kv(self, x: Array) -> tuple[Array, Array]:
    """x [B, K, d] → keys [B, H, D, K], values [B, H, K, D] (see dot_product_attention)."""
    keys = jnp.transpose(self._split(self.key(x)), (0, 2, 3, 1))
    values = jnp.transpose(self._split(self.value(x)), (0, 2, 1, 3))
    return keys, values

  def attend(self, q: Array, k: Array, v: Array, bias: Array) -> Array:
    """Attention of q over (k, v) plus the output projection → [B, Q, d]."""
    out = dot_product_attention(q, k, v, bias, self.dtype)
    return self.out(out.reshape(out.shape[:-2] + (-1,)))

  def __call__(self, x: Array, memory: Array, bias: Array) -> Array:
    k, v = self.project_kv(memory)
    return self.attend(self.project_q(x), k, v, bias)


class MlpBlock(nn.Module):
  """T5 MLP: `wi` (one activation) or `wi_0`, `wi_1`, ... (gated), then `wo`."""
  mlp_dim: int
  activations: Sequence[str]
  out_features: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  matmul_dtype: jnp.dtype | None = None  # see `matmul`

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    kinit = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    h = None
    for i, name in enumerate(self.activations):
      dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      y = _act(name)(Dense(self.mlp_dim, kinit, self.dtype, self.matmul_dtype,
                           name=dense_name)(x))
      h = y if h is None else h * y
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return Dense(self.out_features, kinit, self.dtype, self.matmul_dtype, name="wo")(h)
