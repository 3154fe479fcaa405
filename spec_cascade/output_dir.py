"""Guards for a resumable output folder (a sweep's): one writer at a time, and a resume that
never mixes results made under other settings.

* `DirLock`: a lock file (`.lock`, created exclusively) holding the writer's host, pid and
  start time. A second run into the folder is refused with who holds it; a lock left by a
  process that is gone (same host, pid not running) is taken over with a warning.
* `check_settings`: the settings that shape every point's result (the pair's checksums,
  examples, lengths, batch, seeds, precision, devices...) are written to `settings.json` on
  the first run; a resume with any of them changed is refused, naming each change, because
  its points would be compared with (and normalised by) points made under the old ones.
  Settings that only add points (methods, α grid, temperatures, γ) are free to change: they
  are part of each point's key.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import socket
from typing import Any, Mapping, Sequence

import numpy as np

from spec_cascade import results as results_lib

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
SETTINGS_FILE = "settings.json"
_EDGE_BYTES = 1 << 20


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class DirLock:
  """with DirLock(folder): ... — the folder's single-writer lock (see the module docstring)."""

  def __init__(self, folder: str, what: str = "sweep"):
    self.path = os.path.join(folder, LOCK_FILE)
    self.what = what
    self._held = False

  def _holder(self) -> dict[str, Any]:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                 and not _pid_alive(holder["pid"]))
        if stale:
          log.warning("%s: taking over a lock left by pid %d (no longer running).", self.path,
                      holder["pid"])
          os.remove(self.path)
          continue
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
               f"{holder.get('started', '?')}") if holder else "another process"
        raise ValueError(
            f"{os.path.dirname(self.path)} is in use by another {self.what} ({who}). Wait for "
            f"it to finish or write elsewhere; if that process is gone, delete {self.path}.")
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self._held = True
      return
    raise ValueError(f"could not take the lock {self.path}; delete it if no run is using it.")

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> "DirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def checkpoint_checksum(path: str) -> str:
  """A checksum of a checkpoint folder or file: every file's relative path, size, and the
  SHA-256 of its first and last MiB (cheap on multi-GB checkpoints, and any retraining or
  conversion changes it). Remote paths (gs://...) are identified by the path alone."""
  if "://" in str(path):
    return f"path:{path}"
  path = os.path.abspath(path)
  if not os.path.exists(path):
    return f"missing:{path}"
  files = ([path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs))
  h = hashlib.sha256()
  for f in files:
    size = os.path.getsize(f)
    h.update(f"{os.path.relpath(f, path)}\0{size}\0".encode())
    with open(f, "rb") as fh:
      h.update(fh.read(_EDGE_BYTES))
      if size > 2 * _EDGE_BYTES:
        fh.seek(-_EDGE_BYTES, os.SEEK_END)
        h.update(fh.read())
  return h.hexdigest()[:16]


def _canonical(value: Any) -> Any:
  """A JSON-stable form of a setting (tuples as lists, dict keys as strings, others by repr)."""
  if isinstance(value, Mapping):
    return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def check_settings(folder: str, settings: Mapping[str, Any], *, write: bool = True) -> None:
  """Records `settings` in folder/settings.json, or refuses (ValueError) when the folder's
  recorded settings differ, naming each change and how to go on."""
  path = os.path.join(folder, SETTINGS_FILE)
  new = _canonical(dict(settings))
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); it records the settings the results "
                       "in this folder were made with. Restore it, or write elsewhere.") from None
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
      lines = "; ".join(f"{k}: {json.dumps(old.get(k))} → {json.dumps(new.get(k))}"
                        for k in changed)
      raise ValueError(
          f"{folder} holds results made with other settings ({lines}). Their points would be "
          "mixed with (and normalised by) the new ones. Write to a new output folder, or run "
          "with the recorded settings to resume.")
    return
  if write:
    results_lib.atomic_write_text(path, json.dumps(new, indent=1, ensure_ascii=False) + "\n")


# JSON records of a run (metrics.json, predictions.jsonl): standard JSON (NaN → null), numpy
# scalars and arrays as numbers and lists, written atomically.

def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def _clean(x):
  """NaN/inf → None so the JSON is standard."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def write_json(path: str, obj: Any) -> None:
  results_lib.atomic_write_text(path, json.dumps(_clean(obj), indent=2, default=_json_default,
                                                 ensure_ascii=False) + "\n")


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  text = "".join(json.dumps(_clean(r), default=_json_default, ensure_ascii=False) + "\n"
                 for r in records)
  results_lib.atomic_write_text(path, text)
