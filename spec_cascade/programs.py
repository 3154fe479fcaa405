"""Compiled decode programs kept bounded: input shapes rounded up to a small fixed set of
buckets, and at most `capacity` jitted programs alive at once (least recently used dropped).

XLA compiles one program per input shape. Without buckets, calling `generate` one example at
a time over inputs of many lengths compiles a program per length and method, and a process
that decodes many methods (a sweep) keeps every one of them: the committed pair ran out of
memory inside LLVM that way. As T5X pads every batch to the task's fixed feature lengths, the
engine pads inputs to a bucket:

  lengths  up to a power of two ≥ MIN_LENGTH (64, 128, 256, ...), multiples of 4096 above
           that (columns are never dropped: a caller that pads to fixed lengths, as infer and
           the sweep do, keeps one program per method);
  batch    up to a power of two (1, 2, 4, 8, 16), multiples of 16 above that. Padding rows
           (example id −1) start finished, so they cost no extra loop iterations.

Padding never changes a row's result beyond float rounding: padded input positions are masked,
padding rows are skipped. Inputs of 1–256 tokens at batch 1–16 therefore need at most
3 × 5 = 15 programs per method.

A count is not the only bound: each program XLA compiles for the CPU maps its code into
hundreds to thousands of separate memory regions, Linux caps the regions of a process
(vm.max_map_count, 65,530 by default), and LLVM aborts the whole process when it runs out
("LLVM ERROR: Unable to allocate section memory" — the main job's sweep with the batch-1
latency table did, at its 164th point with fewer than 48 programs alive). So before each new
compilation the cache also drops programs, least recently used first, while the process holds
more than `MAP_BUDGET` of the regions it may map.
"""
from __future__ import annotations

import collections
import gc
import logging
import threading
from typing import Any, Callable, Hashable

import numpy as np

MIN_LENGTH = 64
LENGTH_STEP = 4096  # above this, lengths round to multiples of it
BATCH_STEP = 16     # above this, batch sizes round to multiples of it
DEFAULT_CAPACITY = 48
MAP_BUDGET = 0.5  # of vm.max_map_count: the rest is headroom for the next compilation

log = logging.getLogger(__name__)


def memory_maps() -> tuple[int, int] | None:
  """(memory regions this process has mapped, the most it may map) on Linux; None where the
  kernel does not say."""
  try:
    with open("/proc/self/maps", "rb") as f:
      mapped = sum(1 for _ in f)
    with open("/proc/sys/vm/max_map_count", encoding="ascii") as f:
      limit = int(f.read())
  except (OSError, ValueError):
    return None
  return mapped, limit


def bucket_length(n: int) -> int:
  """The padded input length for a longest input of n tokens."""
  if n <= MIN_LENGTH:
    return MIN_LENGTH
  if n <= LENGTH_STEP:
    return 1 << (int(n) - 1).bit_length()
  return -(-int(n) // LENGTH_STEP) * LENGTH_STEP


def bucket_batch(b: int) -> int:
  """The padded batch size for b rows (b ≥ 1)."""
  if b <= BATCH_STEP:
    return 1 << (int(b) - 1).bit_length()
  return -(-int(b) // BATCH_STEP) * BATCH_STEP


def bucketed_shape(rows: int, length: int) -> tuple[int, int]:
  """The [batch, length] a [rows, length] input is padded to."""
  return bucket_batch(rows), bucket_length(length)


def trim_padding(inputs: np.ndarray, *, pad_id: int = 0) -> np.ndarray:
  """inputs [B, S] → inputs [B, S'] without the trailing columns that are padding in every
  row (S' ≥ 1). An encoder (or a prompt's prefill) costs in proportion to the columns it is
  given, padding included: an input of 30 tokens passed in a [1, 256] array cost a T5
  verifier's set-up 2.3× that of [1, 64] (bench/RESULTS.md), and no output depends on
  padding beyond float rounding."""
  used = np.flatnonzero((inputs != pad_id).any(axis=0))
  width = int(used[-1]) + 1 if used.size else 1
  return inputs if width == inputs.shape[1] else inputs[:, :width]


def pad_to_buckets(inputs: np.ndarray, ids: np.ndarray, *,
                   pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """inputs [B, S] int32, ids [B] → (inputs [B', S'], ids [B']) at `bucketed_shape(B, S)`:
  columns of padding appended, and rows of padding with example id −1."""
  rows, length = inputs.shape
  out_rows, out_length = bucketed_shape(rows, length)
  if (out_rows, out_length) == (rows, length):
    return inputs, ids
  padded = np.full((out_rows, out_length), pad_id, np.int32)
  padded[:rows, :length] = inputs
  new_ids = np.full((out_rows,), -1, np.int32)
  new_ids[:rows] = ids
  return padded, new_ids


class ProgramCache:
  """A least-recently-used map key → jitted function, holding at most `capacity` of them.

  An evicted function's compiled executables are released (`clear_cache`), so the number of
  live programs stays bounded however many methods and shapes a process decodes."""

  def __init__(self, capacity: int = DEFAULT_CAPACITY):
    self._entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.evictions = 0
    self.capacity = 0
    self.set_capacity(capacity)

  def set_capacity(self, capacity: int) -> None:
    if not isinstance(capacity, (int, np.integer)) or capacity < 1:
      raise ValueError(f"the compiled-program cache capacity must be a positive int, got "
                       f"{capacity!r}.")
    with self._lock:
      self.capacity = int(capacity)
      self._shrink()

  def get(self, key: Hashable, make: Callable[[], Any]):
    """The function for key, made by make() (and cached) when absent."""
    with self._lock:
      fn = self._entries.get(key)
      if fn is not None:
        self._entries.move_to_end(key)
        return fn
      self._relieve_maps()  # a new program is about to be compiled
    fn = make()
    with self._lock:
      fn = self._entries.setdefault(key, fn)
      self._entries.move_to_end(key)
      self._shrink()
    return fn

  def _relieve_maps(self) -> None:
    """Drops programs (LRU) while the process maps more than MAP_BUDGET of its allowed
    memory regions (see the module docstring)."""
    dropped, maps = 0, memory_maps()
    while self._entries and maps is not None and maps[0] > MAP_BUDGET * maps[1]:
      self._evict_one()
      dropped += 1
      gc.collect()  # the executables go with the last reference to them
      maps = memory_maps()
    if dropped:
      log.info("dropped %d compiled programs to stay within the process's memory-map limit "
               "(%s regions of %s mapped now; %d programs kept)", dropped,
               *(maps or ("?", "?")), len(self._entries))

  def _evict_one(self) -> None:
    _, old = self._entries.popitem(last=False)
    self.evictions += 1
    clear = getattr(old, "clear_cache", None)
    if clear is not None:
      clear()

  def _shrink(self) -> None:
    while len(self._entries) > self.capacity:
      self._evict_one()

  def __len__(self) -> int:
    return len(self._entries)

  def keys(self) -> list[Hashable]:
    with self._lock:
      return list(self._entries)

  def compiled_count(self) -> int:
    """How many compiled executables the cached functions hold (one per shape used)."""
    with self._lock:
      fns = list(self._entries.values())
    return sum(int(getattr(f, "_cache_size", lambda: 0)()) for f in fns)

  def clear(self) -> None:
    with self._lock:
      while self._entries:
        _, old = self._entries.popitem(last=False)
        clear = getattr(old, "clear_cache", None)
        if clear is not None:
          clear()


PROGRAMS = ProgramCache()


def set_capacity(capacity: int) -> None:
  """Bounds how many compiled decode programs a process keeps (default 48)."""
  PROGRAMS.set_capacity(capacity)
