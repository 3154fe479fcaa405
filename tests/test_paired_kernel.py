"""The paired CPU kernel (`matmul_dtype='bfloat16'`: bfloat16 inputs, exact products, float32
sums, AVX512-BF16): XLA's bfloat16 dot up to summation order, a row scored the same whatever
else shares its call or thread, and a model whose verify blocks equal its one-token steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pairs
from spec_cascade import loading
from spec_cascade.decoding import generate
from spec_cascade.models import T5Model, cpu_kernels, get_config

needs_paired = pytest.mark.skipif(
    not (cpu_kernels.available() and cpu_kernels.paired_kernel_available()),
    reason="the paired kernel needs the CPU kernels and AVX512-BF16")
PAIR = "spec_cascade/assets/offline_pair"


def _case(rng, m, k, n):
  x = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
  return x, cpu_kernels.PairedKernel(w, cpu_kernels.pack_k_pairs(w))


def _paired(x, w, num_threads=None):
  return np.asarray(jax.jit(lambda a, b: cpu_kernels.paired_matmul(a, b, num_threads))(x, w))


def test_pairs_pack_and_unpack():
  """Tiles of 64 columns of (w[2p, c], w[2p + 1, c]) pairs, padded with zeros to whole tiles and
  an even K; unpacking gives the bfloat16 values back."""
  w = jnp.arange(5 * 70, dtype=jnp.float32).reshape(5, 70)
  pairs = cpu_kernels.pack_k_pairs(w)
  assert pairs.shape == (2, 3, 64, 2) and pairs.dtype == jnp.bfloat16
  assert pairs[0, 1, 3, 0] == w[2, 3] and pairs[0, 1, 3, 1] == w[3, 3]
  assert pairs[1, 0, 5, 1] == w[1, 69] and pairs[1, 0, 6, 0] == 0  # column 70: padding
  assert pairs[0, 2, 0, 1] == 0  # row 5: padding
  np.testing.assert_array_equal(cpu_kernels.unpack_k_pairs(pairs, 5, 70),
                                w.astype(jnp.bfloat16))


@needs_paired
@pytest.mark.parametrize("m,k,n", [(1, 256, 256), (2, 256, 640), (3, 640, 256), (4, 2, 64),
                                   (5, 128, 4224), (17, 96, 100), (33, 64, 30), (64, 256, 130)])
def test_paired_products_are_the_float64_product_of_the_bfloat16_values(m, k, n):
  """Rows 1-64 (passes of 4 rows and their remainders, blocks of 32 rows), columns in partial
  tiles, K of one pair."""
  rng = np.random.default_rng(m * 1000 + k + n)
  x, w = _case(rng, m, k, n)
  got = _paired(x, w)
  want = np.asarray(x, np.float64) @ np.asarray(w.full.astype(jnp.bfloat16), np.float64)
  assert got.shape == (m, n) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max() + 1e-6)
  xla = jnp.dot(x, w.full.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  np.testing.assert_allclose(got, np.asarray(xla), rtol=1e-5, atol=1e-4)


@needs_paired
def test_a_row_is_scored_the_same_whatever_shares_its_call_or_thread():
  """Each row of a 64-row product equals that row alone, bit for bit; one thread and two give
  the same bits (the helper takes whole tiles, each column is one chain of sums)."""
  x, w = _case(np.random.default_rng(1), 64, 256, 640)
  block = _paired(x, w)
  for i in (0, 3, 31, 32, 63):
    np.testing.assert_array_equal(_paired(x[i:i + 1], w)[0], block[i])
  for rows in (1, 3, 8, 64):
    np.testing.assert_array_equal(_paired(x[:rows], w, 1), _paired(x[:rows], w, 2))


@needs_paired
def test_paired_kernel_only_where_it_applies():
  x, w = _case(np.random.default_rng(2), 4, 64, 64)
  assert cpu_kernels.paired_applies(x, w)
  assert not cpu_kernels.paired_applies(x.astype(jnp.float32), w)  # float32 inputs
  assert not cpu_kernels.paired_applies(jnp.zeros((65, 64), jnp.bfloat16), w)  # > 64 rows
  odd = jnp.ones((5, 64), jnp.float32)
  odd_k = cpu_kernels.PairedKernel(odd, cpu_kernels.pack_k_pairs(odd))
  assert not cpu_kernels.paired_applies(jnp.zeros((1, 5), jnp.bfloat16), odd_k)


@needs_paired
def test_paired_kernel_differentiates_like_xla():
  x, w = _case(np.random.default_rng(3), 3, 64, 70)
  dx = jnp.asarray(np.random.default_rng(4).standard_normal(x.shape), jnp.bfloat16)
  _, got = jax.jvp(lambda a: cpu_kernels.paired_matmul(a, w), (x,), (dx,))
  want = jnp.dot(dx, w.full.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


@needs_paired
def test_stream_params_pairs_every_kernel_for_bfloat16_inputs():
  """matmul_dtype='bfloat16': each 2-D kernel with an even K gets a PairedKernel (float32 or
  bfloat16 values alike: its matmuls round them to bfloat16 anyway); `unstreamed` gives the
  arrays back; float32 inputs keep the exact-twin rule."""
  rng = np.random.default_rng(5)
  params = {"a": {"kernel": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)},
            "b": {"kernel": jnp.ones((4, 3), jnp.bfloat16)},
            "c": {"kernel": jnp.ones((3, 3), jnp.float32)},  # odd K: stays
            "d": {"scale": jnp.ones((4,), jnp.float32)}}
  out = cpu_kernels.stream_params(params, "bfloat16")
  assert isinstance(out["a"]["kernel"], cpu_kernels.PairedKernel)
  assert isinstance(out["b"]["kernel"], cpu_kernels.PairedKernel)
  assert out["c"]["kernel"] is params["c"]["kernel"]
  assert out["d"]["scale"] is params["d"]["scale"]
  back = cpu_kernels.unstreamed(out)
  for name in ("a", "b"):
    np.testing.assert_array_equal(back[name]["kernel"], params[name]["kernel"])
  assert not isinstance(cpu_kernels.stream_params(params)["a"]["kernel"],
                        cpu_kernels.PairedKernel)


def _model(matmul_dtype):
  cfg = get_config("tiny").replace(vocab_size=101, emb_dim=64, num_heads=2, head_dim=32,
                                   num_encoder_layers=1, num_decoder_layers=2, mlp_dim=96,
                                   matmul_dtype=matmul_dtype)
  return T5Model(cfg)


@needs_paired
def test_a_bfloat16_input_verify_block_scores_as_one_token_steps_do():
  """A T5 model with bfloat16 matmul inputs on the paired kernel: a 4-token block gives the
  logits of 4 one-token steps bit for bit, and XLA's bfloat16-input logits (unpaired params)
  up to float32 summation order."""
  model = _model("bfloat16")
  plain = model.init_params(jax.random.key(0))
  params = cpu_kernels.stream_params(plain, "bfloat16")
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(2, 101, (1, 11)), jnp.int32)
  dec = jnp.asarray(rng.integers(2, 101, (1, 4)), jnp.int32)
  zero = jnp.zeros(1, jnp.int32)
  encoded, mask = model.encode(params, inputs)
  assert "spec_cascade_few_rows_paired" in jax.jit(model.decode_block).lower(
      params, model.init_cache(params, encoded, mask, 13), dec, zero).as_text()
  block, singles = pairs.block_and_steps(model, params, inputs, dec, zero, 13)
  np.testing.assert_array_equal(block, singles)
  xla = jax.jit(lambda p: model.forward(p, inputs, dec))(plain)
  np.testing.assert_allclose(np.asarray(block), np.asarray(xla), rtol=1e-4, atol=1e-4)


@needs_paired
@pytest.mark.slow
def test_the_committed_pair_with_bfloat16_inputs_decodes_exactly():
  """`load_bundle(..., matmul_dtype='bfloat16')` pairs the committed pair's kernels; greedy
  SpecDecode at γ 1, 3, 5 reproduces the verifier alone (same numerics), token for token, at
  batch 1 and 3."""
  verifier = loading.load_bundle(f"{PAIR}/verifier", matmul_dtype="bfloat16")
  drafter = loading.load_bundle(f"{PAIR}/drafter", matmul_dtype="bfloat16")
  leaves = jax.tree_util.tree_leaves(verifier.params,
                                     is_leaf=lambda a: isinstance(a, cpu_kernels.PairedKernel))
  assert any(isinstance(a, cpu_kernels.PairedKernel) for a in leaves)
  rng = np.random.default_rng(0)
  for rows in (1, 3):
    x = rng.integers(2, 4000, (rows, 24)).astype(np.int32)
    want = generate(drafter, verifier, x, method="verifier", temperature=0.0,
                    max_decode_length=24).tokens
    for gamma in (1, 3, 5):
      got = generate(drafter, verifier, x, method="spec_decode", num_draft_tokens=gamma,
                     temperature=0.0, max_decode_length=24).tokens
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_mean_square_gives_a_row_the_same_bits_whatever_shares_the_op():
  """The norms' sum of squares: a row's value does not depend on the op's shape (XLA's
  reduction gave [1, 2, d] and [8, 8, d] rows different last bits), and equals the float64
  mean to float32 rounding, for power-of-two widths and others."""
  from spec_cascade.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  for d in (256, 96, 1):
    x = jnp.asarray(rng.standard_normal((8, 8, d)) * 3, jnp.float32)
    f = jax.jit(layers.mean_square)
    full = np.asarray(f(x))
    for b, q in ((1, 1), (1, 2), (2, 1), (4, 1), (8, 1), (8, 4), (3, 8)):
      np.testing.assert_array_equal(np.asarray(f(x[:b, :q])), full[:b, :q])
    want = np.mean(np.square(np.asarray(x, np.float64)), axis=-1, keepdims=True)
    np.testing.assert_allclose(full, want, rtol=1e-6)


@pytest.mark.skipif(not cpu_kernels.available(), reason="the CPU kernels cannot be built here")
@pytest.mark.parametrize("matmul_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("batch", [4, 16, 40])
def test_a_batch_verify_block_scores_each_row_as_its_one_token_steps_do(matmul_dtype, batch):
  """At any batch (a verify call of 3 tokens per row is 3 × batch rows, past the 64 rows that
  plain products and the 32 the attention once took), each row of a block gets the logits of
  that row's one-token steps bit for bit, with float32 and with bfloat16 matmul inputs: the
  norms, products and attention of a decode call do not depend on how many rows share it."""
  if matmul_dtype and not cpu_kernels.paired_kernel_available():
    pytest.skip("bfloat16 inputs go to XLA's dot on this CPU")
  model = _model(matmul_dtype)
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32),
                                  model.init_params(jax.random.key(1)))
  params = cpu_kernels.stream_params(params, matmul_dtype)
  rng = np.random.default_rng(batch)
  inputs = jnp.asarray(rng.integers(2, 101, (batch, 9)), jnp.int32)
  dec = jnp.asarray(rng.integers(2, 101, (batch, 3)), jnp.int32)
  offsets = jnp.asarray(rng.integers(0, 5, (batch,)), jnp.int32)  # rows at other positions
  block, singles = pairs.block_and_steps(model, params, inputs, dec, offsets, 12)
  np.testing.assert_array_equal(block, singles)
