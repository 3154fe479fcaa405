"""Multi-host runs: start-up, each process's share of the examples, results gathered, one writer.

A pod run is several processes (one per TPU VM host, or several local ones for a rehearsal,
`scripts/simulate_pod.sh`) that run the same program over one global mesh. The conventions:

- Start-up (`initialize`): on Cloud TPU VMs `jax.distributed.initialize()` finds the slice by
  itself (`--multiprocess`); elsewhere every process is told the coordinator's address, the
  number of processes and its own index, by flags (`--coordinator_address`, `--num_processes`,
  `--process_id`) or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID). A coordinator that never answers is an error after `--pod_timeout_s`.
- Data: each process reads and tokenizes only its share of a split (`shard_of`: examples
  p, p + P, p + 2P, ...), then the shares are exchanged (`allgather_objects`) so that every
  process holds the same global batches — the decode is one SPMD program over the global mesh
  and needs the same inputs everywhere. Token ids are small next to the decode's own traffic.
- Results: arrays that span processes come back whole on every process (`to_host`); only
  process 0 writes files (`is_writer`).
- Failures: a step that only process 0 does (taking a lock, checking a folder) is wrapped in
  `run_on_writer`, so that the other processes raise the same error instead of waiting forever
  in the next collective.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

# Environment variables a launcher (scripts/simulate_pod.sh, a job scheduler) sets per process.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_MULTIHOST = "SPEC_CASCADE_MULTIHOST"  # "1": jax.distributed.initialize() with auto-detection
ENV_TIMEOUT = "SPEC_CASCADE_POD_TIMEOUT_S"

DEFAULT_TIMEOUT_S = 120


class PodError(RuntimeError):
  """A multi-host start-up or coordination failure, with what to check."""


@dataclasses.dataclass(frozen=True)
class PodSettings:
  """How this process joins a pod. coordinator None and auto False: a single process."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False  # jax.distributed.initialize() with no arguments (Cloud TPU VMs)
  timeout_s: int = DEFAULT_TIMEOUT_S

  @property
  def multihost(self) -> bool:
    return self.auto or self.coordinator_address is not None


def add_flags(parser) -> None:
  """The pod flags every entry point takes (argparse)."""
  parser.add_argument("--multiprocess", action="store_true",
                      help="join a multi-host run (jax.distributed.initialize(); on Cloud TPU "
                           "VMs the slice is found automatically)")
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0's coordinator (not needed on Cloud TPU VMs)")
  parser.add_argument("--num_processes", type=int, default=None,
                      help="processes in the run (with --coordinator_address)")
  parser.add_argument("--process_id", type=int, default=None,
                      help="this process's index in [0, num_processes)")
  parser.add_argument("--pod_timeout_s", type=int, default=None,
                      help=f"seconds to wait for the coordinator (default {DEFAULT_TIMEOUT_S})")


def _env_int(env, name: str) -> int | None:
  value = env.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise PodError(f"{name}={value!r} must be an integer.") from None


def settings_from(args=None, environ=None) -> PodSettings:
  """PodSettings from parsed flags (`add_flags`), falling back to the environment; PodError
  for settings that cannot describe a pod (a missing count or index, an index out of range, an
  address without a port)."""
  env = os.environ if environ is None else environ
  get = lambda name: getattr(args, name, None) if args is not None else None
  coordinator = get("coordinator_address") or env.get(ENV_COORDINATOR) or None
  num = get("num_processes")
  num = _env_int(env, ENV_NUM_PROCESSES) if num is None else num
  pid = get("process_id")
  pid = _env_int(env, ENV_PROCESS_ID) if pid is None else pid
  timeout = get("pod_timeout_s") or _env_int(env, ENV_TIMEOUT) or DEFAULT_TIMEOUT_S
  auto = bool(get("multiprocess")) or env.get(ENV_MULTIHOST, "0") == "1"
  if coordinator is None:
    if num is not None or pid is not None:
      if (num or 1) > 1:
        raise PodError(f"--num_processes={num} / --process_id={pid} need "
                       "--coordinator_address=HOST:PORT (process 0's host and a free port), "
                       f"or {ENV_COORDINATOR} in the environment.")
    return PodSettings(auto=auto, timeout_s=int(timeout))
  if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator):
    raise PodError(f"coordinator address {coordinator!r} must be HOST:PORT, e.g. "
                   "127.0.0.1:12345.")
  if num is None or pid is None:
    raise PodError(f"coordinator {coordinator} given without "
                   f"{'--num_processes' if num is None else '--process_id'}: every process needs "
                   f"the number of processes and its own index (flags or {ENV_NUM_PROCESSES} / "
                   f"{ENV_PROCESS_ID}).")
  if num < 1 or not 0 <= pid < num:
    raise PodError(f"process_id={pid} must lie in [0, num_processes={num}).")
  if timeout < 1:
    raise PodError(f"pod timeout must be at least 1 s, got {timeout}.")
  return PodSettings(coordinator, int(num), int(pid), auto, int(timeout))


def initialize(settings: PodSettings | None = None) -> None:
  """Joins the pod `settings` describes (default: from the environment); nothing for a single
  process. PodError when the coordinator does not answer within the timeout or the pod that
  formed is not the one described."""
  import jax  # pylint: disable=g-import-not-at-top
  settings = settings_from() if settings is None else settings
  if not settings.multihost:
    return
  if jax.distributed.is_initialized():
    return
  if settings.coordinator_address is None:
    jax.distributed.initialize()  # Cloud TPU VMs: the slice describes itself
  else:
    if settings.process_id != 0:
      # XLA aborts the whole process when the coordinator cannot be reached; wait for it here
      # so that the failure is an error a user can read.
      _wait_for_coordinator(settings)
    # CPU processes exchange collectives through gloo; TPU and GPU clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      jax.distributed.initialize(
          coordinator_address=settings.coordinator_address,
          num_processes=settings.num_processes, process_id=settings.process_id,
          initialization_timeout=settings.timeout_s,
          # A dead process is noticed by the others within about this long.
          heartbeat_timeout_seconds=max(10, min(100, settings.timeout_s)))
    except Exception as e:  # pylint: disable=broad-except  (XLA raises its own types)
      raise PodError(
          f"process {settings.process_id} of {settings.num_processes} could not join the pod "
          f"at {settings.coordinator_address} within {settings.timeout_s} s "
          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Check that "
          "process 0 is running, every process was given the same coordinator address and "
          "--num_processes, and each its own --process_id.") from None
    if jax.process_count() != settings.num_processes:
      raise PodError(f"asked for {settings.num_processes} processes (--num_processes), but "
                     f"the coordinator at {settings.coordinator_address} formed a pod of "
                     f"{jax.process_count()}: give every process the same --num_processes.")
  log.info("pod: process %d of %d, %d local of %d devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())


def _wait_for_coordinator(settings: PodSettings) -> None:
  """Returns once something listens at the coordinator address; PodError after the timeout."""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  host, _, port = settings.coordinator_address.rpartition(":")
  host = host.strip("[]")
  deadline = time.monotonic() + settings.timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise PodError(
            f"process {settings.process_id} of {settings.num_processes}: no coordinator "
            f"answered at {settings.coordinator_address} within {settings.timeout_s} s "
            f"({e.strerror or e}); could not join the pod. Check that process 0 is running and "
            "every process was given the same coordinator address and --num_processes.") from None
      time.sleep(0.5)


def process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def is_writer() -> bool:
  """Only process 0 of a multi-host run writes files."""
  return process_index() == 0


def shard_of(n: int, index: int | None = None, count: int | None = None) -> np.ndarray:
  """The positions in [0, n) this process reads: index, index + count, ... (defaults: this
  process of this run). `interleave_shares` puts the shares back in order."""
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  return np.arange(index, n, count)


def interleave_shares(shares: Sequence[Sequence[T]]) -> list[T]:
  """Inverse of `shard_of`: element k of share s is global position s + k·len(shares)."""
  out: list[T] = []
  longest = max((len(s) for s in shares), default=0)
  for k in range(longest):
    for s in shares:
      if k < len(s):
        out.append(s[k])
  return out


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order, on every process."""
  if process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(len(data)))).reshape(-1)
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:len(data)] = data
  every = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(every[p, :int(sizes[p])]).decode("utf-8"))
          for p in range(len(sizes))]


def broadcast_object(obj: Any) -> Any:
  """Process 0's JSON-serialisable `obj` on every process."""
  return allgather_objects(obj)[0]


def run_on_writer(fn: Callable[[], T]) -> T | None:
  """Runs fn on process 0 only; if it raises, every process raises (PodError naming it on the
  others), so none waits in a later collective for a process that stopped. Returns fn's
  result on process 0, None elsewhere."""
  result, error = None, None
  if is_writer():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      error = e
  if process_count() > 1:
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if message is not None and error is None:
      raise PodError(f"process 0 stopped: {message}")
  if error is not None:
    raise error
  return result


def to_host(x) -> np.ndarray:
  """A jax.Array (or anything array-like) as one numpy array holding every row, also when its
  shards live on several processes."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
