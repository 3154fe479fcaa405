"""Streamed weights: bfloat16 twins of dense kernels that bfloat16 holds exactly, read by the
few-row kernel for products of 1-8 rows; the same outputs at half the weight traffic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import loading
from spec_cascade.decoding import generate
from spec_cascade.models import T5Model, cpu_kernels, get_config, layers

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason="the few-row kernel cannot be built on this machine")
PAIR = "spec_cascade/assets/offline_pair"


def _bf16_exact(rng, *shape):
  """float32 values that bfloat16 holds exactly (as a bfloat16 checkpoint loads)."""
  w = rng.standard_normal(shape, dtype=np.float32)
  return jnp.asarray(jnp.asarray(w, jnp.bfloat16), jnp.float32)


def _twins(params):
  leaves = jax.tree_util.tree_leaves(
      params, is_leaf=lambda x: isinstance(x, cpu_kernels.StreamedKernel))
  return [x for x in leaves if isinstance(x, cpu_kernels.StreamedKernel)]


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [*range(1, 9), 13, 32, 33, 64])
@pytest.mark.parametrize("k,n", [(256, 640), (7, 13), (300, 3), (24, 1000)])
def test_bfloat16_weights_give_the_float32_product_of_their_values(rows, k, n, threads,
                                                                   monkeypatch):
  """Column tails and short K, on one thread and two, as for float32 weights."""
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, str(threads))
  rng = np.random.default_rng(rows * 1000 + k + n)
  x = jnp.asarray(rng.standard_normal((rows, k), dtype=np.float32))
  w32 = _bf16_exact(rng, k, n)
  want = np.asarray(x, np.float64) @ np.asarray(w32, np.float64)
  w = cpu_kernels.pack_bf16(w32.astype(jnp.bfloat16))
  got = np.asarray(jax.jit(lambda x, w: cpu_kernels.matmul(x, w))(x, w))
  assert got.shape == (rows, n) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.sqrt(k))


@needs_kernel
def test_a_row_scores_the_same_whatever_rows_share_its_product():
  """Each row's sums run in the same order at every row count, so a verify call's logits for a
  position equal a one-token step's bit for bit: greedy SpecDecode reproduces the verifier."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((64, 256), dtype=np.float32))
  w = cpu_kernels.pack_bf16(_bf16_exact(rng, 256, 650).astype(jnp.bfloat16))  # a column tail
  f = jax.jit(lambda x, w: cpu_kernels.matmul(x, w))
  full = np.asarray(f(x, w))
  for m in (1, 3, 5, 7, 8, 11, 16, 31, 32, 33, 63):
    np.testing.assert_array_equal(np.asarray(f(x[:m], w)), full[:m])


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_untiled_bfloat16_weights_give_the_same_product(rows, monkeypatch):
  """The layout before tiling, which bench/step_variants.py compares against, stays right."""
  monkeypatch.setattr(cpu_kernels, "TILED_BF16", False)
  rng = np.random.default_rng(rows)
  x = jnp.asarray(rng.standard_normal((rows, 200), dtype=np.float32))
  w32 = _bf16_exact(rng, 200, 1000)
  w = cpu_kernels.pack_bf16(w32.astype(jnp.bfloat16))
  np.testing.assert_array_equal(cpu_kernels.unpack_bf16(w), w32.astype(jnp.bfloat16))
  got = np.asarray(jax.jit(lambda x, w: cpu_kernels.matmul(x, w))(x, w))
  np.testing.assert_allclose(got, np.asarray(x, np.float64) @ np.asarray(w32, np.float64),
                             rtol=2e-5, atol=2e-5 * np.sqrt(200))


@needs_kernel
def test_derivatives_through_bfloat16_weights_use_their_values():
  """A trainer's step at few rows differentiates through the kernel with packed weights."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((3, 64), dtype=np.float32))
  w32 = _bf16_exact(rng, 64, 80)
  w = cpu_kernels.pack_bf16(w32.astype(jnp.bfloat16))
  dx = jnp.asarray(rng.standard_normal((3, 64), dtype=np.float32))
  _, tangent = jax.jvp(lambda x: cpu_kernels.matmul(x, w), (x,), (dx,))
  np.testing.assert_allclose(tangent, dx @ w32, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [16, 48, 13, 64, 130, 1000, 4224])
def test_packed_bfloat16_is_tiles_of_64_columns_with_pairs_eight_apart(n):
  """The kernel's order: full tiles of 64 columns, each tile's rows one after another, then
  the last n mod 64 columns as a matrix; in every row, each full 16 columns as (0, 8), (1, 9),
  ..., (7, 15) and the rest as they are. unpack_bf16 undoes it."""
  k = 3
  w = jnp.asarray(np.arange(k * n).reshape(k, n) % 256, jnp.bfloat16)  # bfloat16-exact
  packed = cpu_kernels.pack_bf16(w)
  assert packed.shape == w.shape and packed.dtype == jnp.bfloat16
  flat, wn = np.asarray(packed).reshape(-1), np.asarray(w)
  order = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])
  tiles, tail = n // 64, n % 64
  for t in range(tiles):
    for row in range(k):
      start = (t * k + row) * 64
      for group in range(4):
        np.testing.assert_array_equal(flat[start + 16 * group:start + 16 * group + 16],
                                      wn[row, 64 * t + 16 * group + order])
  rest = flat[tiles * k * 64:].reshape(k, tail)
  full = tail // 16 * 16
  for group in range(tail // 16):
    np.testing.assert_array_equal(rest[:, 16 * group:16 * group + 16],
                                  wn[:, 64 * tiles + 16 * group + order])
  np.testing.assert_array_equal(rest[:, full:], wn[:, 64 * tiles + full:])
  np.testing.assert_array_equal(cpu_kernels.unpack_bf16(packed), w)


def test_stream_params_twins_exact_kernels_only(monkeypatch):
  monkeypatch.setattr(cpu_kernels, "streaming_enabled", lambda: True)
  rng = np.random.default_rng(0)
  exact, rounded = _bf16_exact(rng, 64, 32), jnp.asarray(rng.standard_normal((64, 32)),
                                                          jnp.float32)
  params = {"a": {"kernel": exact}, "b": {"kernel": rounded}, "c": {"scale": exact[0]},
            "d": {"embedding": exact}}
  out = cpu_kernels.stream_params(params)
  assert isinstance(out["a"]["kernel"], cpu_kernels.StreamedKernel)
  assert out["a"]["kernel"].bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      cpu_kernels.unpack_bf16(out["a"]["kernel"].bf16).astype(jnp.float32), exact)
  # bfloat16 would round it: no twin, so nothing a user computes changes.
  assert out["b"]["kernel"] is rounded
  assert out["c"]["scale"] is params["c"]["scale"] and out["d"]["embedding"] is exact
  assert len(_twins(cpu_kernels.stream_params(out))) == 1  # idempotent
  back = cpu_kernels.unstreamed(out)
  assert back["a"]["kernel"].dtype == jnp.float32 and back["b"]["kernel"] is rounded


def test_streaming_is_off_by_environment_or_without_the_kernel(monkeypatch):
  monkeypatch.setenv(cpu_kernels.ENV_STREAM, "0")
  assert not cpu_kernels.streaming_enabled()
  params = {"kernel": _bf16_exact(np.random.default_rng(0), 64, 32)}
  assert cpu_kernels.stream_params(params) is params
  monkeypatch.setenv(cpu_kernels.ENV_STREAM, "1")
  monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
  cpu_kernels.available.cache_clear()
  try:
    assert not cpu_kernels.streaming_enabled()
  finally:
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH)
    cpu_kernels.available.cache_clear()


@needs_kernel
def test_layers_matmul_reads_the_twin_for_few_rows_and_float32_for_many():
  rng = np.random.default_rng(0)
  w32 = _bf16_exact(rng, 64, 48)
  w = cpu_kernels.StreamedKernel(w32, cpu_kernels.pack_bf16(w32.astype(jnp.bfloat16)))

  def lowered(rows, **kw):
    x = jnp.ones((rows, 64), jnp.float32)
    return jax.jit(lambda x, w: layers.matmul(x, w, jnp.float32, None, **kw)).lower(x, w)

  for rows in (1, 5, 8, 9, 32, 64):
    assert "spec_cascade_few_rows_bf16" in lowered(rows).as_text()
  for rows, kw in ((65, {}), (4, {"few_rows_kernel": False})):
    text = lowered(rows, **kw).as_text()
    assert "few_rows" not in text and "bf16" not in text  # XLA's dot on the float32 copy
  # A decode call (≤ 8 tokens per row) at any batch stays on the kernel, as its steps do.
  decode = jax.jit(lambda x, w: layers.matmul(x, w, jnp.float32, None))
  assert "spec_cascade_few_rows_bf16" in decode.lower(jnp.ones((40, 4, 64)), w).as_text()
  assert "few_rows" not in decode.lower(jnp.ones((40, 9, 64)), w).as_text()
  x = jnp.asarray(rng.standard_normal((40, 64), dtype=np.float32))
  for rows in (1, 7, 8, 20, 40):
    got = jax.jit(lambda x, w: layers.matmul(x, w, jnp.float32, None))(x[:rows], w)
    np.testing.assert_allclose(got, x[:rows] @ w32, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_a_model_scores_the_same_with_streamed_weights():
  """A T5 stack with bfloat16-exact weights: logits of a 1- and a 4-token block equal those of
  its float32 params (encoder rows go to XLA with the float32 copy)."""
  cfg = get_config("tiny").replace(vocab_size=101, emb_dim=256, num_heads=2, head_dim=128,
                                   num_encoder_layers=1, num_decoder_layers=2, mlp_dim=320)
  model = T5Model(cfg)
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32),
                                  model.init_params(jax.random.key(0)))
  streamed = cpu_kernels.stream_params(params)
  assert len(_twins(streamed)) == len([p for p in jax.tree_util.tree_leaves_with_path(params)
                                       if p[0][-1].key == "kernel"])
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(2, 101, (1, 40)), jnp.int32)
  for length in (1, 4):
    dec = jnp.asarray(rng.integers(2, 101, (1, length)), jnp.int32)
    fwd = jax.jit(lambda p: model.forward(p, inputs, dec))
    np.testing.assert_allclose(fwd(streamed), fwd(params), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.slow
def test_the_committed_verifier_streams_and_decodes_the_same_tokens():
  """`load_bundle` gives the committed (bfloat16-stored) pair its twins; greedy outputs of the
  verifier alone, the drafter alone and SpecDecode are unchanged."""
  verifier = loading.load_bundle(f"{PAIR}/verifier")
  drafter = loading.load_bundle(f"{PAIR}/drafter")
  assert _twins(verifier.params) and _twins(drafter.params)
  plain = loading.load_bundle(f"{PAIR}/verifier", stream_weights=False)
  plain_d = loading.load_bundle(f"{PAIR}/drafter", stream_weights=False)
  assert not _twins(plain.params) and not _twins(plain_d.params)
  rng = np.random.default_rng(0)
  x = rng.integers(2, 4000, (3, 24)).astype(np.int32)
  for method in ("verifier", "drafter", "spec_decode"):
    kw = dict(method=method, num_draft_tokens=3, max_decode_length=24)
    a = generate(drafter, verifier, x, **kw)
    b = generate(plain_d, plain, x, **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


@pytest.mark.slow
def test_a_streamed_pair_saves_one_float32_copy_per_kernel(tmp_path):
  """Saving bundles that carry twins (`pretrained.save_offline_pair`) writes each kernel once,
  with its values, and loads back the same."""
  from spec_cascade import pretrained  # pylint: disable=g-import-not-at-top
  drafter = loading.load_bundle(f"{PAIR}/drafter")
  verifier = loading.load_bundle(f"{PAIR}/verifier")
  out = pretrained.save_offline_pair(tmp_path / "pair", drafter, verifier,
                                     f"{PAIR}/vocab/sentencepiece.model")
  again = loading.load_bundle(str(out / "verifier"), stream_weights=False)
  want = jax.tree_util.tree_leaves(cpu_kernels.unstreamed(verifier.params))
  got = jax.tree_util.tree_leaves(again.params)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
