"""The few-token CPU kernels (attention of a few queries, embedding lookup of a few tokens): the
same results as XLA's ops, a query scored the same whatever else shares its call, and used only
where they apply."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade.models import T5Model, cpu_kernels, get_config, layers

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason="the CPU kernels cannot be built on this machine")


def _rand(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _attention64(q, k, v, bias):
  """float64 softmax(q · k + bias) · v, q [B, Q, H, D] → [B, Q, H, D]."""
  q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
  logits = np.einsum("bqhd,bhdl->bhql", q, k) + bias
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhql,bhld->bqhd", w, v)


def _case(rng, b, nq, h, d, length, bias_dims):
  """Random q, k, v and a bias with some masked slots; bias_dims says which of B, H, Q the bias
  has ('.' where it broadcasts)."""
  q, k, v = _rand(rng, b, nq, h, d), _rand(rng, b, h, d, length), _rand(rng, b, h, length, d)
  shape = tuple(n if c != "." else 1 for n, c in zip((b, h, nq), bias_dims)) + (length,)
  bias = np.asarray(rng.standard_normal(shape), np.float32)
  bias[..., length // 2:length // 2 + 2] = layers._NEG_INF  # masked slots, as a causal mask's
  return q, k, v, jnp.asarray(bias)


ATTENTION_CASES = [  # B, Q, H, D, L, bias dims
    (1, 1, 4, 64, 56, "BHQ"), (1, 2, 4, 64, 56, "BHQ"), (1, 8, 4, 64, 57, "BHQ"),
    (2, 3, 4, 32, 13, "B.."), (1, 5, 2, 20, 7, ".HQ"), (4, 1, 4, 64, 64, "B.Q"),
    (3, 4, 1, 8, 70, "BHQ"), (1, 7, 2, 12, 1, "..."), (32, 1, 2, 16, 33, "BH."),
]


@needs_kernel
@pytest.mark.parametrize("b,nq,h,d,length,bias_dims", ATTENTION_CASES)
def test_attention_kernel_matches_softmax_attention(b, nq, h, d, length, bias_dims):
  """Query pairs and a lone query, slot tails (L mod 8 ≠ 0) and groups past 32 slots, dims
  not a multiple of 8, every broadcast of the bias, masked slots."""
  rng = np.random.default_rng(b * 100 + nq * 10 + length)
  q, k, v, bias = _case(rng, b, nq, h, d, length, bias_dims)
  assert cpu_kernels.attention_applies(q, k, v, bias)
  f = jax.jit(lambda *a: layers.dot_product_attention(*a, jnp.float32))
  assert "spec_cascade_attend" in f.lower(q, k, v, bias).as_text()
  got = np.asarray(f(q, k, v, bias))
  want = _attention64(q, k, v, bias)
  assert got.shape == (b, nq, h, d) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  xla = np.asarray(layers._xla_attention(q, k, v, bias, jnp.float32))
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_a_fully_masked_row_attends_uniformly_as_xla_does():
  """A padding row (every encoder position masked) gives XLA's answer, not NaN."""
  rng = np.random.default_rng(3)
  q, k, v, _ = _case(rng, 2, 2, 2, 16, 12, "BHQ")
  bias = jnp.zeros((2, 1, 1, 12)).at[1].set(layers._NEG_INF)
  got = np.asarray(jax.jit(lambda *a: cpu_kernels.attend(*a, layers._xla_attention_f32))(
      q, k, v, bias))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, layers._xla_attention(q, k, v, bias, jnp.float32),
                             rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("nq", range(1, 9))
def test_a_query_scores_the_same_whatever_shares_its_call(nq):
  """Bit for bit: each query of a block alone, and each row of a batch alone, gives what it
  gets in the block (a verify call scores a position exactly as a one-token step)."""
  rng = np.random.default_rng(nq)
  q, k, v, bias = _case(rng, 3, nq, 4, 64, 29, "BHQ")
  f = jax.jit(lambda *a: layers.dot_product_attention(*a, jnp.float32))
  block = np.asarray(f(q, k, v, bias))
  for i in range(nq):
    alone = f(q[:, i:i + 1], k, v, bias[:, :, i:i + 1])
    np.testing.assert_array_equal(np.asarray(alone), block[:, i:i + 1])
  for r in range(3):
    row = f(q[r:r + 1], k[r:r + 1], v[r:r + 1], bias[r:r + 1])
    np.testing.assert_array_equal(np.asarray(row), block[r:r + 1])


@needs_kernel
@pytest.mark.parametrize("b,nq,heads", [(8, 1, 4), (5, 3, 4), (40, 4, 4), (1, 4, 4),
                                         (1, 1, 16), (3, 2, 5)])
def test_attention_split_between_threads_gives_the_same_bits(b, nq, heads):
  """(Batch row, head) units split between the caller and the helper thread, at batch 1 too
  (each query whole on one thread): the same bits as one thread, and as each row alone."""
  rng = np.random.default_rng(b + nq)
  q, k, v, bias = _case(rng, b, nq, heads, 64, 56, "BHQ")
  f = lambda *a: cpu_kernels.attend(*a, layers._xla_attention_f32)
  split = np.asarray(jax.jit(f)(q, k, v, bias))
  cpu_kernels.SPLIT_ATTENTION = False
  try:
    alone = np.asarray(jax.jit(f)(q, k, v, bias))
  finally:
    cpu_kernels.SPLIT_ATTENTION = True
  np.testing.assert_array_equal(split, alone)
  for row in (0, b - 1):
    got = jax.jit(f)(q[row:row + 1], k[row:row + 1], v[row:row + 1], bias[row:row + 1])
    np.testing.assert_array_equal(np.asarray(got)[0], split[row])
  np.testing.assert_allclose(split, _attention64(q, k, v, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_attention_kernel_only_where_it_applies():
  rng = np.random.default_rng(0)

  def lowered(b, nq, dtype=jnp.float32, length=16):
    q, k, v, bias = _case(rng, b, nq, 2, 8, length, "BHQ")
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    f = lambda *a: layers.dot_product_attention(*a, dtype)
    return jax.jit(f).lower(q, k, v, bias).as_text()

  # Any batch: every decode call of a batch attends in the kernel's order.
  assert all("spec_cascade_attend" in lowered(b, nq) for b, nq in ((1, 1), (1, 8), (4, 8),
                                                                    (32, 1), (33, 1), (64, 4)))
  assert "spec_cascade_attend" not in lowered(1, 9)    # a block of queries (teacher forcing)
  assert "spec_cascade_attend" not in lowered(1, 2, jnp.bfloat16)
  cpu_kernels.ATTENTION_KERNEL = False
  try:
    assert "spec_cascade_attend" not in lowered(1, 2)
  finally:
    cpu_kernels.ATTENTION_KERNEL = True


@needs_kernel
def test_attention_kernel_differentiates_like_xla():
  rng = np.random.default_rng(1)
  q, k, v, bias = _case(rng, 2, 3, 2, 16, 11, "BHQ")
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
  kernel = lambda *a: cpu_kernels.attend(*a, layers._xla_attention_f32)
  got = jax.grad(loss(kernel), (0, 1, 2, 3))(q, k, v, bias)
  want = jax.grad(loss(layers._xla_attention_f32), (0, 1, 2, 3))(q, k, v, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_lookup_kernel_takes_rows_as_jnp_take_does():
  """Rows by id, ids counted from the end, NaN rows for ids out of range; derivatives too."""
  rng = np.random.default_rng(2)
  table = _rand(rng, 50, 24)
  ids = jnp.asarray([[0, 49, -1, 3], [50, -51, 7, 7]], jnp.int32)
  assert cpu_kernels.lookup_applies(table, ids)
  got = np.asarray(jax.jit(cpu_kernels.take_rows)(table, ids))
  np.testing.assert_array_equal(got, np.asarray(jnp.take(table, ids, axis=0)))
  assert np.isnan(got[1, :2]).all() and np.isfinite(got[0]).all()
  ok = ids[:, :3] % 50
  loss = lambda f: lambda t: jnp.sum(f(t, ok) ** 2)
  np.testing.assert_allclose(jax.grad(loss(cpu_kernels.take_rows))(table),
                             jax.grad(loss(lambda t, i: jnp.take(t, i, axis=0)))(table))


@needs_kernel
def test_embed_looks_up_few_tokens_with_the_kernel():
  embed = layers.Embed(40, 8)
  params = embed.init(jax.random.key(0), jnp.ones((1, 1), jnp.int32))

  def lowered(n):
    return jax.jit(lambda p, t: embed.apply(p, t)).lower(params, jnp.ones((1, n), jnp.int32))

  assert "spec_cascade_take_rows" in lowered(1).as_text()
  assert "spec_cascade_take_rows" in lowered(32).as_text()
  assert "spec_cascade_take_rows" not in lowered(33).as_text()  # a sequence: XLA's gather
  tokens = jnp.asarray([[3, 39, 0, 3]], jnp.int32)
  np.testing.assert_array_equal(embed.apply(params, tokens),
                                params["params"]["embedding"][tokens])


@needs_kernel
def test_a_verify_block_scores_each_position_as_one_token_steps_do():
  """A T5 decoder with the few-token kernels (and streamed bfloat16 weights): a block of 4
  tokens gives the logits of 4 one-token steps bit for bit, and the teacher-forced logits up
  to float32 rounding."""
  cfg = get_config("tiny").replace(vocab_size=101, emb_dim=64, num_heads=2, head_dim=32,
                                   num_encoder_layers=1, num_decoder_layers=2, mlp_dim=96)
  model = T5Model(cfg)
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32),
                                  model.init_params(jax.random.key(0)))
  params = cpu_kernels.stream_params(params)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(2, 101, (1, 11)), jnp.int32)
  dec = jnp.asarray(rng.integers(2, 101, (1, 4)), jnp.int32)
  encoded, mask = model.encode(params, inputs)
  cache = model.init_cache(params, encoded, mask, 13)
  step = jax.jit(model.decode_block)
  assert "spec_cascade_attend" in step.lower(params, cache, dec, jnp.zeros(1, jnp.int32)
                                             ).as_text()
  block, _ = step(params, cache, dec, jnp.zeros(1, jnp.int32))
  singles, c = [], cache
  for i in range(4):
    logits, c = step(params, c, dec[:, i:i + 1], jnp.full((1,), i, jnp.int32))
    singles.append(np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(block), np.concatenate(singles, axis=1))
  forced = model.forward(params, inputs, dec)
  np.testing.assert_allclose(np.asarray(block), np.asarray(forced), rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_heads_read_their_shared_key_value_head(kv_heads):
  """Grouped-query attention (decoder-only models): query head h reads key/value head
  h // (H / Hkv), as repeating each key/value head does."""
  rng = np.random.default_rng(kv_heads)
  q, _, _, bias = _case(rng, 2, 3, 4, 16, 21, "B.Q")
  k, v = _rand(rng, 2, kv_heads, 16, 21), _rand(rng, 2, kv_heads, 21, 16)
  assert cpu_kernels.attention_applies(q, k, v, bias)
  got = jax.jit(lambda *a: cpu_kernels.attend(*a, layers._xla_attention_f32))(q, k, v, bias)
  groups = 4 // kv_heads
  want = _attention64(q, np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1), bias)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert not cpu_kernels.attention_applies(q, k[:, :1].repeat(3, axis=1),
                                           v[:, :1].repeat(3, axis=1), bias)  # 3 ∤ 4


@needs_kernel
def test_a_decoder_only_verify_block_scores_as_one_token_steps_do():
  """A Llama-style model (grouped-query heads, no soft-capping; streamed bfloat16 weights)
  attends through the kernel; a 3-token block gives the logits of 3 one-token steps bit for bit and the full forward's up
  to float32 rounding; with soft-capping (Gemma 2) attention stays XLA's."""
  from spec_cascade.models import DecoderConfig, DecoderOnlyModel  # pylint: disable=g-import-not-at-top
  cfg = DecoderConfig(vocab_size=97, emb_dim=48, num_heads=4, num_kv_heads=2, head_dim=12,
                      mlp_dim=64, num_layers=2)
  model = DecoderOnlyModel(cfg)
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32),
                                  model.init_params(jax.random.key(0)))
  params = cpu_kernels.stream_params(params)  # products of 1 and 3 rows: the same kernel
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(1, 97, (1, 5)), jnp.int32)
  block = jnp.asarray(rng.integers(1, 97, (1, 3)), jnp.int32)
  _, cache = model.prefill(params, prompt, jnp.asarray([5]), 12)
  step = jax.jit(model.decode_block)
  assert "spec_cascade_attend" in step.lower(params, cache, block).as_text()
  together, _ = step(params, cache, block)
  singles, c = [], cache
  for i in range(3):
    logits, c = step(params, c, block[:, i:i + 1])
    singles.append(np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(together), np.concatenate(singles, axis=1))
  full = model.forward(params, jnp.concatenate([prompt, block], axis=1))
  np.testing.assert_allclose(np.asarray(together), np.asarray(full[:, 5:]), rtol=1e-4,
                             atol=1e-4)
  capped = DecoderOnlyModel(cfg.replace(attn_logit_softcap=2.0))
  assert "spec_cascade_attend" not in jax.jit(capped.decode_block).lower(
      params, cache, block).as_text()
