"""CPU kernels for the few-row float32 matrix products of verify calls (and, `attend` and
`take_rows` below, their attention and token lookup), built at first use.

On a CPU, XLA multiplies one row by a weight matrix at full memory bandwidth but runs a packed
general product for 2-8 rows, costing up to twice as much per weight byte; a verify call of
γ + 1 rows then costs ~2 one-token steps and speculative decoding cannot win there
(bench/RESULTS.md). `kernels/few_rows.cc` reads each weight vector once for all rows. It is
compiled here with the host's C++ compiler into a per-user cache, keyed on the source, the
compiler, jaxlib and the CPU, and registered as an XLA FFI target.

`matmul` uses it only where it applies: a CPU backend with one device (a custom call is not
partitioned across devices), float32 rows, and float32 weights for 2 to `MAX_ROWS` rows or
bfloat16 weights for 1 to `MAX_BF16_ROWS` rows and decode calls of any batch. With
`matmul_dtype='bfloat16'` on a CPU with AVX512-BF16, `paired_matmul` takes bfloat16 rows
(`PairedKernel`: exact products, float32 sums, two k per instruction). Everywhere else, and
wherever the kernel cannot be built (no compiler, no AVX2/FMA, not x86-64), the product is
XLA's dot, with one warning saying why. SPEC_CASCADE_CPU_KERNELS=0 turns the kernel off.
Where the process may use two or more cores, a helper thread takes half of a product's tiles
(or of K) and half of an attention call's batch rows (`threads`;
SPEC_CASCADE_KERNEL_THREADS=1 keeps them on the calling thread).

Streamed weights: a decode step at batch 1 is weight traffic (a 13M-parameter step reads 53 MB
of float32), and a checkpoint stored in bfloat16 — ours are — holds weights that bfloat16
represents exactly. `stream_params` gives each such dense kernel a bfloat16 twin
(`StreamedKernel`, stored in the kernel's order: tiles of 64 columns, `pack_bf16`);
`layers.matmul` sends products of few rows to the kernel with the twin (half the bytes,
widened exactly in registers, so the same float32 product) and keeps the float32 copy for
XLA's dot over many rows (encoders, large batches), where XLA with bfloat16 operands would
convert the weights on every call.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MIN_ROWS, MAX_ROWS = 2, 8  # float32 weights: where the kernel beat XLA's dot
# bfloat16 weights: half the traffic beats XLA's float32 dot from one row (a one-token step)
# up. Tiled, the kernel's products of the verifier's step ran 1.7-2.8x faster than XLA's
# float32 dot at 8-32 rows too (batches, and verify calls of a few rows each: bench/RESULTS.md,
# "Tiled bfloat16 twins"), 1.65x at 48 and 1.1-1.2x at 64 (a 64-token input's encoder), and
# about even past that (0.94-1.12x at 64-512 rows in session 22, 0.8x at 96 in session 21):
# 1-64 rows, and decode calls at any batch (`decode_shaped`), go to the kernel. Untiled
# (benchmarks only) it takes 8, where XLA's packed product was as fast past that
# (bench/streamed_weights.py).
MAX_BF16_ROWS = 64
MAX_UNTILED_BF16_ROWS = 8
# bfloat16 matmul inputs (`PairedKernel`): the same rule as tiled twins.
MAX_PAIRED_ROWS = 64
ENV_STREAM = "SPEC_CASCADE_STREAMED_WEIGHTS"
ENV_SWITCH = "SPEC_CASCADE_CPU_KERNELS"
ENV_CACHE = "SPEC_CASCADE_KERNEL_CACHE"
ENV_THREADS = "SPEC_CASCADE_KERNEL_THREADS"
_SOURCES = tuple(pathlib.Path(__file__).with_name("kernels") / name
                 for name in ("few_rows.cc", "few_tokens.cc"))
# FFI target → exported symbol: float32 weights, bfloat16 weights (widened exactly in the kernel).
_TARGETS = {"spec_cascade_few_rows": "SpecCascadeFewRows",
            "spec_cascade_few_rows_bf16": "SpecCascadeFewRowsBf16",
            "spec_cascade_few_rows_bf16_untiled": "SpecCascadeFewRowsBf16Untiled",
            "spec_cascade_few_rows_paired": "SpecCascadeFewRowsPaired",
            "spec_cascade_attend": "SpecCascadeAttend",
            "spec_cascade_take_rows": "SpecCascadeTakeRows"}
# Whether bfloat16 twins are tiled (`pack_bf16`). Read when params are streamed and when
# products are traced; benchmarks turn it off to measure what tiling buys
# (bench/step_variants.py), nothing else should.
TILED_BF16 = True

log = logging.getLogger(__name__)


def enabled() -> bool:
  return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def threads() -> int:
  """Threads per product: 2 (the caller and one helper) where this process may use two or more
  cores, else 1; SPEC_CASCADE_KERNEL_THREADS=1 keeps products on the calling thread (several
  processes sharing the cores, such as parallel test workers)."""
  value = os.environ.get(ENV_THREADS, "").strip()
  if value:
    if value not in ("1", "2"):
      raise ValueError(f"{ENV_THREADS}={value!r}: use 1 or 2 (threads per product).")
    return int(value)
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return 2 if cores >= 2 else 1


def _cpu_signature() -> tuple[str, set[str]]:
  """(model name, flags) of this CPU from /proc/cpuinfo ('' and {} where unreadable)."""
  model, flags = "", set()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and not model:
        model = value.strip()
      elif key.strip() == "flags" and not flags:
        flags = set(value.split())
  except OSError:
    pass
  return model, flags


def cache_dir() -> pathlib.Path:
  if os.environ.get(ENV_CACHE):
    return pathlib.Path(os.environ[ENV_CACHE])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "spec_cascade" / "kernels"


def _build(compiler: str, out: pathlib.Path) -> None:
  """Compiles the kernel to `out` (atomically: concurrent builders leave one whole file)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
  os.close(fd)
  cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w",
         f"-I{jax.ffi.include_dir()}", *map(str, _SOURCES), "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


_registered = False  # XLA takes one handler per target name and process


def _register(lib_path: pathlib.Path) -> None:
  global _registered  # pylint: disable=global-statement
  if not _registered:
    lib = ctypes.cdll.LoadLibrary(str(lib_path))
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
    _registered = True


@functools.cache
def available() -> bool:
  """Builds (once per machine) and registers the kernel; False, with a warning, where it can't."""
  if not enabled():
    return False
  why = None
  model, flags = _cpu_signature()
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if platform.machine().lower() not in ("x86_64", "amd64"):
    why = f"the kernel is written for x86-64, this machine is {platform.machine()}"
  elif not {"avx2", "fma"} <= flags:
    why = "this CPU lacks AVX2/FMA"
  elif compiler is None:
    why = "no C++ compiler found (install g++ or set CXX)"
  if why is None:
    try:
      version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                               timeout=60, check=False).stdout
      key = hashlib.sha256("\0".join([
          *(src.read_text() for src in _SOURCES), version,
          importlib.metadata.version("jaxlib"), model, " ".join(sorted(flags))]).encode())
      lib_path = cache_dir() / f"few_rows-{key.hexdigest()[:16]}.so"
      if not lib_path.exists():
        log.info("building the few-row CPU kernel into %s", lib_path)
        _build(compiler, lib_path)
      _register(lib_path)
      return True
    except Exception as e:  # pylint: disable=broad-except
      why = f"building it failed: {e}"
  log.warning("Few-row CPU kernel off (%s); verify calls use XLA's dot, which costs up to 2× "
              "more per weight byte at 2-8 rows. %s=0 silences this.", why, ENV_SWITCH)
  return False


def _usable() -> bool:
  return jax.default_backend() == "cpu" and jax.device_count() == 1 and available()


def decode_shaped(x: jax.Array) -> bool:
  """Whether x [B, Q, d] is a decode call's (a one-token step or a verify call: Q ≤
  MAX_ATTENTION_QUERIES tokens per row). Tiled and paired products, and the attention, take
  such calls at any batch: a verify call must score each row exactly as the one-token steps of
  the same batch do, and XLA's dot (where more rows went) sums in another order than the
  kernel — enough, near ties, for greedy speculative decoding to leave the verifier's tokens."""
  return x.ndim >= 3 and 1 <= x.shape[-2] <= MAX_ATTENTION_QUERIES


def _rows_ok(x: jax.Array, low: int, high: int, any_decode: bool) -> bool:
  rows = math.prod(x.shape[:-1])
  return low <= rows and (rows <= high or (any_decode and decode_shaped(x)))


def applies(x: jax.Array, w: jax.Array) -> bool:
  """Whether `matmul(x, w)` would run the kernel (decided from shapes, dtypes and backend):
  tiled bfloat16 twins for 1-`MAX_BF16_ROWS` rows and decode calls of any batch
  (`decode_shaped`), untiled ones for 1-8 rows, float32 weights for 2-8 rows."""
  if w.dtype == jnp.bfloat16:
    rows_ok = (_rows_ok(x, 1, MAX_BF16_ROWS, True) if TILED_BF16
               else _rows_ok(x, 1, MAX_UNTILED_BF16_ROWS, False))
  elif w.dtype == jnp.float32:
    rows_ok = _rows_ok(x, MIN_ROWS, MAX_ROWS, False)
  else:
    return False
  return (rows_ok and w.ndim == 2 and x.shape[-1] == w.shape[0]
          and x.dtype == jnp.float32 and _usable())


class StreamedKernel(NamedTuple):
  """A dense kernel [K, N] held twice: float32 for XLA's dot, and the same values in bfloat16
  for the few-row kernel, in its column order (`pack_bf16`; `stream_params`). A pytree: jit
  sees two arrays."""
  f32: jax.Array
  bf16: jax.Array


# The kernel reads bfloat16 weights 16 columns per load, each 16 stored as 8 pairs (column i,
# column i + 8): one shift and one mask widen them (kernels/few_rows.cc, `LoadRow`); and it
# reads them in tiles of 64 columns whose K rows are contiguous, one sequential stream per
# tile (`TiledRows`).
_PACK = 16
_TILE = 64


def _pairs(w: jax.Array, inverse: bool = False) -> jax.Array:
  """[..., C] → each full 16 columns as (0, 8, 1, 9, ..., 7, 15), the last C mod 16 as they
  are; inverse=True undoes it."""
  c = w.shape[-1]
  full = c // _PACK * _PACK
  groups = (_PACK // 2, 2) if inverse else (2, _PACK // 2)
  head = w[..., :full].reshape(w.shape[:-1] + (full // _PACK,) + groups)
  head = head.swapaxes(-1, -2).reshape(w.shape[:-1] + (full,))
  return jnp.concatenate([head, w[..., full:]], axis=-1)


def pack_bf16(w: jax.Array, tiled: bool | None = None) -> jax.Array:
  """bfloat16 [K, N] → the same values as [K, N] in the kernel's order (the shape is kept; the
  order is the kernel's): first the N // 64 full tiles of 64 columns, each as its K rows one
  after another ([N // 64, K, 64] flattened), then the last N mod 64 columns as a [K, N mod 64]
  matrix; within each row of a tile or of that matrix, each full 16 columns as (0, 8, 1, 9,
  ..., 7, 15) and the last columns as they are. The kernel's bfloat16 target takes only packed
  weights. tiled=False (default: not `TILED_BF16`) packs pairs without tiles, the layout
  before tiling, which only benchmarks use."""
  if not (TILED_BF16 if tiled is None else tiled):
    return _pairs(w)
  k, n = w.shape
  tiles = n // _TILE
  head = w[:, :tiles * _TILE].reshape(k, tiles, _TILE).swapaxes(0, 1)
  flat = jnp.concatenate([_pairs(head).reshape(-1), _pairs(w[:, tiles * _TILE:]).reshape(-1)])
  return flat.reshape(k, n)


def unpack_bf16(packed: jax.Array, tiled: bool | None = None) -> jax.Array:
  """The inverse of `pack_bf16`."""
  if not (TILED_BF16 if tiled is None else tiled):
    return _pairs(packed, inverse=True)
  k, n = packed.shape
  tiles = n // _TILE
  flat = packed.reshape(-1)
  head = _pairs(flat[:k * tiles * _TILE].reshape(tiles, k, _TILE), inverse=True).swapaxes(0, 1)
  tail = _pairs(flat[k * tiles * _TILE:].reshape(k, n - tiles * _TILE), inverse=True)
  return jnp.concatenate([head.reshape(k, tiles * _TILE), tail], axis=1)


class PairedKernel(NamedTuple):
  """A dense kernel [K, N] for `matmul_dtype='bfloat16'`: `full` as it was loaded (float32 or
  bfloat16, for XLA's dot over many rows) and `pairs` its bfloat16 values in the paired
  kernel's order (`pack_k_pairs`), for products of 1-`MAX_PAIRED_ROWS` bfloat16 rows and
  decode calls. A pytree: jit sees two arrays."""
  full: jax.Array
  pairs: jax.Array


def paired_kernel_available() -> bool:
  """Whether this CPU has the instructions the paired kernel needs (AVX512-BF16, AVX512VL)."""
  return {"avx512_bf16", "avx512f", "avx512vl", "avx512bw"} <= _cpu_signature()[1]


def pack_k_pairs(w: jax.Array) -> jax.Array:
  """[K, N] → bfloat16 [ceil(N / 64), ceil(K / 2), 64, 2]: tiles of 64 columns (N padded with
  zero columns), each as its rows of pairs (w[2p, c], w[2p + 1, c]) (K padded with a zero row):
  the order in which the paired kernel multiplies two k at once (kernels/few_rows.cc,
  `PairPass`)."""
  k, n = w.shape
  kp, tiles = -(-k // 2) * 2, -(-n // _TILE)
  w = jnp.pad(jnp.asarray(w, jnp.bfloat16), ((0, kp - k), (0, tiles * _TILE - n)))
  return w.reshape(kp // 2, 2, tiles, _TILE).transpose(2, 0, 3, 1)


def unpack_k_pairs(pairs: jax.Array, k: int, n: int) -> jax.Array:
  """The inverse of `pack_k_pairs` for a [k, n] kernel."""
  tiles, half = pairs.shape[:2]
  return pairs.transpose(1, 3, 0, 2).reshape(2 * half, tiles * _TILE)[:k, :n]


def paired_applies(x: jax.Array, w: PairedKernel) -> bool:
  """Whether `paired_matmul(x, w)` would run the kernel: bfloat16 x [..., K] of 1 to
  MAX_PAIRED_ROWS rows or a decode call of any batch (`decode_shaped`), K even, on a one-device
  CPU backend with AVX512-BF16."""
  k = w.full.shape[0]
  return (_rows_ok(x, 1, MAX_PAIRED_ROWS, True) and x.dtype == jnp.bfloat16
          and x.shape[-1] == k and k % 2 == 0 and w.full.ndim == 2
          and paired_kernel_available() and _usable())


def streaming_enabled() -> bool:
  """Whether `stream_params` may add bfloat16 twins: the kernel runs here and
  SPEC_CASCADE_STREAMED_WEIGHTS is not 0."""
  if os.environ.get(ENV_STREAM, "1").strip().lower() in ("0", "false", "no", "off"):
    return False
  return _usable()


def stream_params(params: Any, matmul_dtype: str | None = None) -> Any:
  """matmul_dtype='bfloat16' (a model whose dense layers take bfloat16 inputs): gives every
  2-D `kernel` leaf a `PairedKernel` on CPUs with AVX512-BF16 (the values its matmuls use
  anyway, in the paired kernel's order); elsewhere params are unchanged.

  Otherwise gives every 2-D float32 `kernel` leaf whose values bfloat16 holds exactly a
  bfloat16 twin (`StreamedKernel`); other leaves, and kernels bfloat16 would round, stay as
  they are, so outputs do not change beyond the kernel's summation order. Params unchanged
  where streaming is off (`streaming_enabled`).

  Small models too: a drafter's weights fit the caches and its one-row steps alone gain
  nothing (0-20 % slower than XLA's dot), but between verify calls, which stream the
  verifier's weights through the same caches, its halved weights come back faster — greedy
  SpecDecode γ 3 ran 7-16 % faster with the 1.87M drafter streamed (bench/RESULTS.md)."""
  if not streaming_enabled():
    return params
  if matmul_dtype is not None and jnp.dtype(matmul_dtype) == jnp.bfloat16:
    if not paired_kernel_available():
      return params

    def paired(path, leaf):
      name = getattr(path[-1], "key", None) if path else None
      if (name != "kernel" or isinstance(leaf, (StreamedKernel, PairedKernel))
          or getattr(leaf, "ndim", 0) != 2
          or leaf.dtype not in (jnp.float32, jnp.bfloat16) or leaf.shape[0] % 2):
        return leaf
      return PairedKernel(jnp.asarray(leaf), pack_k_pairs(leaf))

    return jax.tree_util.tree_map_with_path(
        paired, params, is_leaf=lambda x: isinstance(x, (StreamedKernel, PairedKernel)))

  def one(path, leaf):
    name = getattr(path[-1], "key", None) if path else None
    if (name != "kernel" or isinstance(leaf, StreamedKernel) or getattr(leaf, "ndim", 0) != 2
        or leaf.dtype != jnp.float32):
      return leaf
    low = jnp.asarray(leaf, jnp.bfloat16)
    if not bool(jnp.array_equal(low.astype(jnp.float32), leaf)):
      return leaf
    return StreamedKernel(jnp.asarray(leaf), pack_bf16(low))

  return jax.tree_util.tree_map_with_path(
      one, params, is_leaf=lambda x: isinstance(x, StreamedKernel))


def unstreamed(params: Any) -> Any:
  """`params` with every `StreamedKernel` / `PairedKernel` back to the array it was made from
  (to save or train)."""
  def one(x):
    if isinstance(x, StreamedKernel):
      return x.f32
    return x.full if isinstance(x, PairedKernel) else x
  return jax.tree_util.tree_map(
      one, params, is_leaf=lambda x: isinstance(x, (StreamedKernel, PairedKernel)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _few_rows(x2: jax.Array, w: jax.Array, num_threads: int) -> jax.Array:
  """[M, K] @ [K, N] → [M, N], float32, by the FFI kernel on `num_threads` threads."""
  out = jax.ShapeDtypeStruct((x2.shape[0], w.shape[1]), jnp.float32)
  if w.dtype != jnp.bfloat16:
    target = "spec_cascade_few_rows"
  else:
    target = "spec_cascade_few_rows_bf16" + ("" if TILED_BF16 else "_untiled")
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
      x2, w, threads=np.int32(num_threads))


@_few_rows.defjvp
def _few_rows_jvp(num_threads, primals, tangents):
  # Derivatives (a trainer's step at ≤ 8 rows) go through XLA's dot: linear, transposable.
  x2, w = primals
  dx, dw = tangents
  plain, dplain = (unpack_bf16(w), unpack_bf16(dw)) if w.dtype == jnp.bfloat16 else (w, dw)
  return (_few_rows(x2, w, num_threads),
          jnp.dot(dx, plain.astype(jnp.float32)) + jnp.dot(x2, dplain.astype(jnp.float32)))


def matmul(x: jax.Array, w: jax.Array, num_threads: int | None = None) -> jax.Array:
  """x [..., K] @ w [K, N] → [..., N] in float32 by the kernel; call only where `applies`.
  A bfloat16 w must be packed (`pack_bf16`, as `StreamedKernel.bf16` is).
  num_threads: 1 or 2 per product (default `threads()`, read when the caller is traced)."""
  y = _few_rows(x.reshape(-1, x.shape[-1]), w, num_threads or threads())
  return y.reshape(x.shape[:-1] + (w.shape[1],))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _paired(x2: jax.Array, pairs: jax.Array, n: int, num_threads: int) -> jax.Array:
  """bfloat16 [M, K] @ paired [tiles, K / 2, 64, 2] → float32 [M, n] by the FFI kernel."""
  out = jax.ShapeDtypeStruct((x2.shape[0], n), jnp.float32)
  return jax.ffi.ffi_call("spec_cascade_few_rows_paired", out, vmap_method="sequential")(
      x2, pairs, threads=np.int32(num_threads))


@_paired.defjvp
def _paired_jvp(n, num_threads, primals, tangents):
  x2, pairs = primals
  dx, dpairs = tangents
  k = x2.shape[1]
  w, dw = unpack_k_pairs(pairs, k, n), unpack_k_pairs(dpairs, k, n)
  return (_paired(x2, pairs, n, num_threads),
          jnp.dot(dx, w, preferred_element_type=jnp.float32)
          + jnp.dot(x2, dw, preferred_element_type=jnp.float32))


def paired_matmul(x: jax.Array, w: PairedKernel, num_threads: int | None = None) -> jax.Array:
  """bfloat16 x [..., K] @ w → float32 [..., N]: exact products summed in float32, as XLA's
  bfloat16 dot with a float32 result (in another order); call only where `paired_applies`."""
  n = w.full.shape[1]
  y = _paired(x.reshape(-1, x.shape[-1]), w.pairs, n, num_threads or threads())
  return y.reshape(x.shape[:-1] + (n,))


# Attention of a few queries (`kernels/few_tokens.cc`): a decode step's or verify call's, where
# XLA runs 6-8 small thunks per layer. Queries per row it takes, at any batch: as for the
# products, every decode call of a batch must attend in the kernel's order (`decode_shaped`).
MAX_ATTENTION_QUERIES = 8
# Whether `attention_applies` may choose the kernel. Read when programs are traced; benchmarks
# turn it off to measure what it buys (bench/step_variants.py), nothing else should.
ATTENTION_KERNEL = True
# Whether the kernel's batch rows are split between the caller and the helper thread (as
# products are, `threads`); benchmarks only turn it off.
SPLIT_ATTENTION = True


def attention_applies(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> bool:
  """Whether `attend(q, k, v, bias, ...)` would run the kernel: float32 q [B, Q, H, D] with
  Q ≤ MAX_ATTENTION_QUERIES (any B), k [B, Hkv, D, L], v [B, Hkv, L, D]
  with Hkv dividing H, bias [B|1, H|1, Q|1, L], on a one-device CPU backend where the kernel
  builds."""
  if not ATTENTION_KERNEL or q.ndim != 4 or k.ndim != 4 or bias.ndim != 4:
    return False
  b, nq, h, d = q.shape
  kv_heads, length = k.shape[1], k.shape[-1]
  shapes_ok = (k.shape == (b, kv_heads, d, length) and v.shape == (b, kv_heads, length, d)
               and length > 0 and kv_heads > 0 and h % kv_heads == 0
               and all(got in (1, want) for got, want in zip(bias.shape[:3], (b, h, nq)))
               and bias.shape[3] == length)
  return (shapes_ok and 1 <= nq <= MAX_ATTENTION_QUERIES
          and all(a.dtype == jnp.float32 for a in (q, k, v)) and _usable())


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, reference) -> jax.Array:
  """softmax(q · k + bias) · v per row, head and query by the kernel; call only where
  `attention_applies`. q [B, Q, H, D], k [B, Hkv, D, L], v [B, Hkv, L, D] (query head h reads
  key/value head h // (H / Hkv)), bias [B|1, H|1, Q|1, L] (any float dtype) → [B, Q, H, D]
  float32. `reference(q, k, v, bias)` is the same function in
  XLA ops (hashable: a module-level function); derivatives go through it."""
  out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  return jax.ffi.ffi_call("spec_cascade_attend", out, vmap_method="sequential")(
      q, k, v, bias.astype(jnp.float32),
      threads=np.int32(threads() if SPLIT_ATTENTION else 1))


@attend.defjvp
def _attend_jvp(reference, primals, tangents):
  _, dout = jax.jvp(reference, primals, tangents)
  return attend(*primals, reference), dout


# Embedding lookups of at most this many tokens go through the kernel (`take_rows`).
MAX_LOOKUP_TOKENS = 32
# Whether `lookup_applies` may choose the kernel; benchmarks only turn it off.
LOOKUP_KERNEL = True


def lookup_applies(table: jax.Array, ids: jax.Array) -> bool:
  """Whether `take_rows(table, ids)` would run the kernel: a float32 table [V, d] and at most
  MAX_LOOKUP_TOKENS integer ids, on a one-device CPU backend where the kernel builds."""
  return (LOOKUP_KERNEL and table.ndim == 2 and table.dtype == jnp.float32
          and jnp.issubdtype(ids.dtype, jnp.integer) and 1 <= ids.size <= MAX_LOOKUP_TOKENS
          and _usable())


@jax.custom_jvp
def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table [V, d] float32, ids [...] integer → [..., d]: jnp.take(table, ids, axis=0) (same
  index rules) by the kernel, one copy per row; call only where `lookup_applies`."""
  flat = ids.reshape(-1).astype(jnp.int32)
  out = jax.ShapeDtypeStruct((flat.shape[0], table.shape[1]), jnp.float32)
  rows = jax.ffi.ffi_call("spec_cascade_take_rows", out, vmap_method="sequential")(table, flat)
  return rows.reshape(ids.shape + (table.shape[1],))


@take_rows.defjvp
def _take_rows_jvp(primals, tangents):
  table, ids = primals
  return take_rows(table, ids), jnp.take(tangents[0], ids, axis=0)
