"""A CPU kernel for the few-row float32 matrix products of verify calls, built at first use.

On a CPU, XLA multiplies one row by a weight matrix at full memory bandwidth but runs a packed
general product for 2-8 rows, costing up to twice as much per weight byte; a verify call of
γ + 1 rows then costs ~2 one-token steps and speculative decoding cannot win there
(bench/RESULTS.md). `kernels/few_rows.cc` reads each weight vector once for all rows. It is
compiled here with the host's C++ compiler into a per-user cache, keyed on the source, the
compiler, jaxlib and the CPU, and registered as an XLA FFI target.

`matmul` uses it only where it applies: a CPU backend with one device (a custom call is not
partitioned across devices), float32 operands, 2 to `MAX_ROWS` rows. Everywhere else, and
wherever the kernel cannot be built (no compiler, no AVX2/FMA, not x86-64), the product is
XLA's dot, with one warning saying why. SPEC_CASCADE_CPU_KERNELS=0 turns the kernel off.
Where the process may use two or more cores, a product's second half of K runs on a helper
thread (`threads`; SPEC_CASCADE_KERNEL_THREADS=1 keeps it on the calling thread).
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

import jax
import jax.numpy as jnp
import numpy as np

MIN_ROWS, MAX_ROWS = 2, 8
ENV_SWITCH = "SPEC_CASCADE_CPU_KERNELS"
ENV_CACHE = "SPEC_CASCADE_KERNEL_CACHE"
ENV_THREADS = "SPEC_CASCADE_KERNEL_THREADS"
_SOURCE = pathlib.Path(__file__).with_name("kernels") / "few_rows.cc"
_TARGET = "spec_cascade_few_rows"
_SYMBOL = "SpecCascadeFewRows"

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
         f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
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
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)),
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
          _SOURCE.read_text(), version, importlib.metadata.version("jaxlib"), model,
          " ".join(sorted(flags))]).encode())
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


def applies(x: jax.Array, w: jax.Array) -> bool:
  """Whether `matmul(x, w)` would run the kernel (decided from shapes, dtypes and backend)."""
  rows = math.prod(x.shape[:-1])
  return (MIN_ROWS <= rows <= MAX_ROWS and w.ndim == 2 and x.shape[-1] == w.shape[0]
          and x.dtype == jnp.float32 and w.dtype == jnp.float32
          and jax.default_backend() == "cpu" and jax.device_count() == 1 and available())


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _few_rows(x2: jax.Array, w: jax.Array, num_threads: int) -> jax.Array:
  """[M, K] @ [K, N] → [M, N], float32, by the FFI kernel on `num_threads` threads."""
  out = jax.ShapeDtypeStruct((x2.shape[0], w.shape[1]), jnp.float32)
  return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(
      x2, w, threads=np.int32(num_threads))


@_few_rows.defjvp
def _few_rows_jvp(num_threads, primals, tangents):
  # Derivatives (a trainer's step at ≤ 8 rows) go through XLA's dot: linear, transposable.
  x2, w = primals
  dx, dw = tangents
  return _few_rows(x2, w, num_threads), jnp.dot(dx, w) + jnp.dot(x2, dw)


def matmul(x: jax.Array, w: jax.Array, num_threads: int | None = None) -> jax.Array:
  """x [..., K] @ w [K, N] → [..., N] in float32 by the kernel; call only where `applies`.
  num_threads: 1 or 2 per product (default `threads()`, read when the caller is traced)."""
  y = _few_rows(x.reshape(-1, x.shape[-1]), w, num_threads or threads())
  return y.reshape(x.shape[:-1] + (w.shape[1],))
