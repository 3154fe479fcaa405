"""Rehearses a multi-host (TPU pod) run on one machine: N local processes, D CPU devices each.

  python -m spec_cascade.simulate_pod N D [--log_dir DIR] [--timeout_s S] -- COMMAND ...
  (or scripts/simulate_pod.sh N D -- COMMAND ...)

Each process runs COMMAND with the environment a pod launcher would give it
(JAX_COORDINATOR_ADDRESS on 127.0.0.1 and a free port, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and
XLA_FLAGS=--xla_force_host_platform_device_count=D, so the entry points (`infer`, `sweep`,
`train`, `calibrate`) join one pod of N·D devices exactly as they would on N TPU VM hosts.
Process 0's output is shown as it comes; every process's is in DIR/process_<i>.log (its pid
in DIR/process_<i>.pid). When a
process fails the others are stopped and its last lines are shown; Ctrl-C stops them all.
The exit status is the first failing process's, else 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

from spec_cascade import pod

STOP_GRACE_S = 10  # SIGTERM first (a trainer saves a checkpoint), SIGKILL after this long


def free_port() -> int:
  """A TCP port on 127.0.0.1 nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_devices_env(base: dict[str, str], devices: int) -> dict[str, str]:
  """base with JAX on `devices` CPU devices; its other XLA flags are kept."""
  flags = [f for f in base.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(base, JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))


def process_env(base: dict[str, str], port: int, num: int, index: int, devices: int,
                timeout_s: int | None = None) -> dict[str, str]:
  """The environment of process `index` of a simulated pod."""
  env = cpu_devices_env(base, devices)
  env[pod.ENV_COORDINATOR] = f"127.0.0.1:{port}"
  env[pod.ENV_NUM_PROCESSES] = str(num)
  env[pod.ENV_PROCESS_ID] = str(index)
  if timeout_s is not None:
    env[pod.ENV_TIMEOUT] = str(timeout_s)
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  """SIGTERM every running process group, then SIGKILL what is left after STOP_GRACE_S."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
  deadline = time.time() + STOP_GRACE_S
  for p in procs:
    try:
      p.wait(max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def _tail(path: str, lines: int = 20) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def run(num: int, devices: int, command: Sequence[str], log_dir: str | None = None,
        timeout_s: float | None = None, pod_timeout_s: int | None = 60, echo: bool = True,
        port: int | None = None) -> int:
  """Runs the simulated pod; returns the exit status (see the module docstring). timeout_s:
  stop everything after this long (status 124); pod_timeout_s: each process's wait for the
  coordinator (`pod.ENV_TIMEOUT`)."""
  if num < 1 or devices < 1:
    raise ValueError(f"need at least 1 process and 1 device each, got {num} × {devices}.")
  if not command:
    raise ValueError("no command: write simulate_pod N D -- python -m spec_cascade.infer ...")
  log_dir = log_dir or tempfile.mkdtemp(prefix="spec_cascade_pod_")
  os.makedirs(log_dir, exist_ok=True)
  port = port or free_port()
  procs, logs, threads = [], [], []
  print(f"simulated pod: {num} processes × {devices} devices, coordinator 127.0.0.1:{port}, "
        f"logs in {log_dir}", file=sys.stderr, flush=True)

  def pump(stream, path: str, show: bool) -> None:
    with open(path, "w", encoding="utf-8") as f:
      for line in iter(stream.readline, ""):
        f.write(line)
        f.flush()
        if show:
          sys.stdout.write(line)
          sys.stdout.flush()

  try:
    for i in range(num):
      env = process_env(dict(os.environ), port, num, i, devices, pod_timeout_s)
      p = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
      path = os.path.join(log_dir, f"process_{i}.log")
      with open(os.path.join(log_dir, f"process_{i}.pid"), "w", encoding="utf-8") as f:
        f.write(f"{p.pid}\n")
      t = threading.Thread(target=pump, args=(p.stdout, path, echo and i == 0), daemon=True)
      t.start()
      procs.append(p)
      logs.append(path)
      threads.append(t)
    started = time.time()
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i = failed[0]
        _stop(procs)
        for t in threads:
          t.join(5)
        print(f"simulated pod: process {i} failed (exit {codes[i]}); stopped the others. "
              f"Last lines of {logs[i]}:\n{_tail(logs[i])}", file=sys.stderr, flush=True)
        return codes[i]
      if all(c == 0 for c in codes):
        for t in threads:
          t.join(5)
        return 0
      if timeout_s is not None and time.time() - started > timeout_s:
        _stop(procs)
        print(f"simulated pod: stopped after {timeout_s:.0f} s (timeout); logs in {log_dir}",
              file=sys.stderr, flush=True)
        return 124
      time.sleep(0.2)
  except KeyboardInterrupt:
    _stop(procs)
    print("simulated pod: interrupted; stopped every process.", file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  command = []
  if "--" in argv:
    cut = argv.index("--")
    argv, command = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(prog="python -m spec_cascade.simulate_pod",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("num_processes", type=int)
  parser.add_argument("devices_per_process", type=int)
  parser.add_argument("--log_dir", default=None)
  parser.add_argument("--timeout_s", type=float, default=None,
                      help="stop every process after this many seconds (exit 124)")
  parser.add_argument("--pod_timeout_s", type=int, default=60,
                      help="each process's wait for the coordinator")
  args = parser.parse_args(argv)
  try:
    return run(args.num_processes, args.devices_per_process, command, args.log_dir,
               args.timeout_s, args.pod_timeout_s)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
