"""The few-row CPU kernel: same products as XLA's dot, used only where it applies, and a clean
fallback to XLA where it cannot be built."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade.models import T5Model, cpu_kernels, get_config, layers

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason="the few-row kernel cannot be built on this machine")


def _rand(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("k,n", [(256, 640), (64, 4224), (7, 13), (19, 8), (1, 40), (300, 3),
                                 (640, 256), (200, 130), (24, 1000)])
def test_kernel_matches_xla_dot(rows, k, n, threads, monkeypatch):
  """Every row count, column tails (N mod 8 ≠ 0), K shorter or not a multiple of a panel; on
  one thread and split over two (K halves cut at a panel, each half with its column tail)."""
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, str(threads))
  rng = np.random.default_rng(rows * 1000 + k + n)
  x, w = _rand(rng, rows, k), _rand(rng, k, n)
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  # A new function per call: the thread count is read when the product is traced.
  got = np.asarray(jax.jit(lambda x, w: cpu_kernels.matmul(x, w))(x, w))
  assert got.shape == (rows, n) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.sqrt(k))


@needs_kernel
def test_products_from_several_threads_at_once_stay_right(monkeypatch):
  """XLA may run independent products at once: a product that finds the helper thread busy
  computes alone, and none of them mixes up another's partial sums."""
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, "2")
  rng = np.random.default_rng(1)
  w = _rand(rng, 256, 640)
  xs = [_rand(rng, 4, 256) for _ in range(4)]
  f = jax.jit(lambda x, w: cpu_kernels.matmul(x, w))
  want = [np.asarray(x, np.float64) @ np.asarray(w, np.float64) for x in xs]
  errors = []

  def work(i):
    for _ in range(40):
      got = np.asarray(f(xs[i], w))
      if not np.allclose(got, want[i], rtol=2e-5, atol=1e-3):
        errors.append(i)

  pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
  for t in pool:
    t.start()
  for t in pool:
    t.join(timeout=120)
  assert not errors and not any(t.is_alive() for t in pool)


def test_thread_count_follows_the_environment_and_the_cores(monkeypatch):
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, "1")
  assert cpu_kernels.threads() == 1
  if cpu_kernels.available():  # the setting reaches the kernel as its `threads` attribute
    x, w = jnp.ones((2, 16)), jnp.ones((16, 8))
    for value in ("1", "2"):
      monkeypatch.setenv(cpu_kernels.ENV_THREADS, value)
      text = jax.jit(lambda x, w: cpu_kernels.matmul(x, w)).lower(x, w).as_text()
      assert f"threads = {value} : i32" in text
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, "3")
  with pytest.raises(ValueError, match="SPEC_CASCADE_KERNEL_THREADS='3': use 1 or 2"):
    cpu_kernels.threads()
  monkeypatch.delenv(cpu_kernels.ENV_THREADS)
  monkeypatch.setattr(cpu_kernels.os, "sched_getaffinity", lambda pid: {0}, raising=False)
  assert cpu_kernels.threads() == 1
  monkeypatch.setattr(cpu_kernels.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
  assert cpu_kernels.threads() == 2


@needs_kernel
def test_kernel_keeps_leading_dims_and_differentiates_like_a_dot():
  rng = np.random.default_rng(0)
  x, w = _rand(rng, 2, 3, 32), _rand(rng, 32, 24)
  np.testing.assert_allclose(cpu_kernels.matmul(x, w), x @ w, rtol=1e-5, atol=1e-5)
  f_kernel = lambda x, w: jnp.sum(jnp.sin(cpu_kernels.matmul(x, w)))
  f_dot = lambda x, w: jnp.sum(jnp.sin(x @ w))
  for a, b in zip(jax.grad(f_kernel, (0, 1))(x, w), jax.grad(f_dot, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_layers_matmul_takes_the_kernel_only_for_two_to_eight_float32_rows():
  rng = np.random.default_rng(0)
  w = _rand(rng, 16, 24)

  def lowered(rows, dtype=jnp.float32, matmul_dtype=None, **kw):
    x = jnp.ones((rows, 16), dtype)
    f = lambda x, w: layers.matmul(x, w, dtype, matmul_dtype, **kw)
    return jax.jit(f).lower(x, w).as_text()

  assert all("spec_cascade_few_rows" in lowered(m) for m in (2, 5, 8))
  assert "spec_cascade_few_rows" not in lowered(1)   # one row: XLA's matrix-vector product
  assert "spec_cascade_few_rows" not in lowered(9)   # a block of rows: XLA's matrix product
  assert "spec_cascade_few_rows" not in lowered(4, matmul_dtype=jnp.bfloat16)
  assert "spec_cascade_few_rows" not in lowered(4, jnp.bfloat16)
  assert "spec_cascade_few_rows" not in lowered(4, few_rows_kernel=False)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_verifier_scores_a_block_with_the_kernel_and_the_same_logits(threads, monkeypatch):
  """A verify call (γ + 1 = 4 tokens at batch 1) runs the kernel and scores as XLA would (the
  256-wide layers are large enough to be split over two threads)."""
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, str(threads))
  cfg = get_config("tiny").replace(vocab_size=101, emb_dim=256, num_heads=2, head_dim=128,
                                   num_encoder_layers=1, num_decoder_layers=2, mlp_dim=320)
  model = T5Model(cfg)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(2, 101, (1, 6)), jnp.int32)
  dec = jnp.asarray(rng.integers(2, 101, (1, 4)), jnp.int32)
  fwd = lambda p: model.forward(p, inputs, dec)
  assert "spec_cascade_few_rows" in jax.jit(fwd).lower(params).as_text()
  with_kernel = np.asarray(jax.jit(fwd)(params))
  orig = cpu_kernels.applies
  try:
    cpu_kernels.applies = lambda x, w: False
    without = np.asarray(jax.jit(lambda p: model.forward(p, inputs, dec))(params))
  finally:
    cpu_kernels.applies = orig
  np.testing.assert_allclose(with_kernel, without, rtol=1e-5, atol=1e-5)


def test_switched_off_by_the_environment(monkeypatch):
  monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
  assert not cpu_kernels.enabled()
  monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "1")
  assert cpu_kernels.enabled()


def test_no_compiler_falls_back_to_xla_with_one_warning(monkeypatch, tmp_path, caplog):
  """Where the kernel cannot be built, products stay XLA's and the user is told why once."""
  monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "1")
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "cache"))
  cpu_kernels.available.cache_clear()
  try:
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
      assert not cpu_kernels.available()
      x = jnp.ones((4, 16))
      w = jnp.ones((16, 8))
      assert not cpu_kernels.applies(x, w)
      text = jax.jit(lambda x, w: layers.matmul(x, w, jnp.float32, None)).lower(x, w).as_text()
      assert "spec_cascade_few_rows" not in text
    warnings = [r for r in caplog.records if "kernel off" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-compiler" in warnings[0].getMessage()
    assert not list((tmp_path / "cache").glob("*.so"))
  finally:
    cpu_kernels.available.cache_clear()  # the next caller builds (or finds) the real one


@needs_kernel
def test_build_is_cached_per_machine(monkeypatch, tmp_path):
  """A fresh cache folder gets one library; a second process-level load reuses it."""
  monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
  cpu_kernels.available.cache_clear()
  try:
    assert cpu_kernels.available()
    built = list(tmp_path.glob("few_rows-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels.available.cache_clear()
    assert cpu_kernels.available()
    assert built[0].stat().st_mtime_ns == stamp
  finally:
    cpu_kernels.available.cache_clear()


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True])
def test_a_product_is_the_same_whether_the_helper_thread_is_awake_or_not(bf16, monkeypatch):
  """A product split over two threads finds the helper asleep after a pause (it then sums
  both halves alone) and awake in a run of calls: the same bits either way, so a row's logits
  never depend on timing."""
  import time  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(cpu_kernels.ENV_THREADS, "2")
  rng = np.random.default_rng(5)
  x, w = _rand(rng, 4, 512), _rand(rng, 512, 640)  # large enough to be split
  if bf16:
    w = cpu_kernels.pack_bf16(w.astype(jnp.bfloat16))
  f = jax.jit(lambda x, w: cpu_kernels.matmul(x, w))
  results = []
  for _ in range(3):
    time.sleep(0.05)  # past the helper's polling time: the next product finds it asleep
    results += [np.asarray(f(x, w)) for _ in range(20)]
  for r in results[1:]:
    np.testing.assert_array_equal(r, results[0])
  if bf16:  # tiled twins: the helper takes whole tiles, so one thread gives the same bits too
    monkeypatch.setenv(cpu_kernels.ENV_THREADS, "1")
    one = jax.jit(lambda x, w: cpu_kernels.matmul(x, w))(x, w)
    np.testing.assert_array_equal(np.asarray(one), results[0])
