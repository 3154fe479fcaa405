"""Checkpoint I/O every format shares: dtypes, parameter trees, JSON with named errors,
local and gs:// paths, and lazy arrays placed on devices one at a time.

A `LazyArray` reads one stored parameter on demand; `materialize` casts and places
each on its sharding before reading the next, so host memory peaks at about one
array. Parameter paths are T5X's ('encoder/layers_0/attention/query/kernel').
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any, Callable, Mapping

import flax
import jax
import ml_dtypes
import numpy as np

Params = Any
# A sharding spec for loading: None (first device), one Sharding for every array,
# a nested dict shaped like the parameter tree of Shardings (or of
# jax.ShapeDtypeStruct with .sharding set), or a callable
# (path 'a/b/kernel', shape) -> Sharding.
ShardingSpec = Any


# -----------------------------------------------------------------------------
# Dtypes and parameter trees.

def _np_dtype(dtype) -> np.dtype:
  """'float32' | 'bfloat16' | np/jnp dtype → numpy dtype (bfloat16 from ml_dtypes)."""
  name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}: parameters restore as 'float32' or 'bfloat16'.")
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(np.float32)


def flatten(tree: Params) -> dict[str, Any]:
  """Nested params → {'encoder/layers_0/.../kernel': leaf}."""
  return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> Params:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")



# -----------------------------------------------------------------------------
# JSON files whose errors name the file and the remedy.

_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number",
                    float: "number", bool: "boolean", type(None): "null"}


def _json_object(raw: bytes | str, where: str, fix: str) -> dict[str, Any]:
  """Parses JSON that must be an object; `where` (the file) and `fix` go into errors.

  json's own errors name neither the file nor a remedy, and a list or string at
  the top level would otherwise fail later as an AttributeError deep in a reader.
  """
  try:
    value = json.loads(raw)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
    raise ValueError(f"{where} is not valid JSON ({e}); the file is damaged or truncated. "
                     f"{fix}") from None
  if not isinstance(value, dict):
    kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    raise ValueError(f"{where} holds a JSON {kind} at the top level where an object "
                     f"({{...}}) is expected. {fix}")
  return value


def _read_json_file(path: str, fix: str) -> dict[str, Any]:
  """A local JSON file that must hold an object (errors name the file)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist. {fix}")
  with open(path, "rb") as f:
    return _json_object(f.read(), path, fix)


def _brief(error: BaseException, limit: int = 300) -> str:
  """A library error in one short line: TensorStore and Orbax append whole specs."""
  text = f"{type(error).__name__}: {error}".split("\n", 1)[0]
  for tail in (" [tensorstore_spec=", " See full TensorStore details"):
    text = text.split(tail, 1)[0]
  return text if len(text) <= limit else text[:limit] + "..."


# -----------------------------------------------------------------------------
# Paths: local or gs:// (through TensorStore).

def _is_gcs(path: str) -> bool:
  return str(path).startswith("gs://")


def _join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if _is_gcs(base) else os.path.join(base, *parts)


def _kvstore_spec(path: str) -> dict[str, Any]:
  """A TensorStore kvstore spec for a local path or gs://bucket/key."""
  path = str(path)
  if _is_gcs(path):
    bucket, _, key = path[len("gs://"):].partition("/")
    if not bucket:
      raise ValueError(f"Malformed GCS path {path!r}; expected gs://BUCKET/PATH.")
    return {"driver": "gcs", "bucket": bucket, "path": key}
  return {"driver": "file", "path": os.path.abspath(path)}


def _read_bytes(path: str) -> bytes | None:
  """The file's bytes, or None if missing (local or gs://, via TensorStore)."""
  if not _is_gcs(path):
    if not os.path.isfile(path):
      return None
    with open(path, "rb") as f:
      return f.read()
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  parent, name = posixpath.split(path.rstrip("/"))
  spec = _kvstore_spec(parent)
  spec["path"] = spec["path"].rstrip("/") + "/"
  result = ts.KvStore.open(spec).result().read(name).result()
  return None if result.state == "missing" else bytes(result.value)


def _exists_dir(path: str) -> bool:
  return True if _is_gcs(path) else os.path.isdir(path)


def _list_dir(path: str) -> list[str]:
  """Immediate children of a directory (names only)."""
  if not _is_gcs(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  spec = _kvstore_spec(path)
  spec["path"] = spec["path"].rstrip("/") + "/"
  keys = ts.KvStore.open(spec).result().list().result()
  return sorted({k.decode().split("/", 1)[0] for k in keys})


def _dirname(path: str) -> str:
  return posixpath.dirname(path) if _is_gcs(path) else os.path.dirname(path)


def _write_text(path: str, text: str) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(path).write_text(text)


# -----------------------------------------------------------------------------
# Lazy arrays, views of them, and placement.

@dataclasses.dataclass
class LazyArray:
  """One stored parameter, read on demand.

  read(index) returns the numpy array at `index` (a tuple of slices; () = all)
  in the stored dtype with bfloat16 restored (T5X v2 uint16 is reinterpreted).
  """
  shape: tuple[int, ...]
  dtype: np.dtype
  read: Callable[[tuple], np.ndarray]
  source: str = ""

  def get(self) -> np.ndarray:
    return self.read(())


def _sharding_for(sharding: ShardingSpec, path: str, shape: tuple[int, ...]):
  if sharding is None:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(sharding, jax.sharding.Sharding):
    return sharding
  if callable(sharding):
    return sharding(path, shape)
  flat = sharding if "/" in next(iter(sharding), "") else flatten(sharding)
  if path not in flat:
    raise ValueError(f"The sharding tree has no entry for parameter {path}.")
  entry = flat[path]
  # A target tree of jax.ShapeDtypeStruct(..., sharding=...) works too.
  return entry.sharding if isinstance(entry, jax.ShapeDtypeStruct) else entry


def _place(lazy: LazyArray, path: str, dtype: np.dtype, sharding: ShardingSpec) -> jax.Array:
  """Reads one array (only the slices each device needs), casts, puts it on devices."""
  target = _sharding_for(sharding, path, lazy.shape)

  def fetch(index):
    return np.asarray(lazy.read(tuple(index))).astype(dtype, copy=False)

  return jax.make_array_from_callback(lazy.shape, target, fetch)


def materialize(lazy_params: Mapping[str, LazyArray], dtype="float32",
                sharding: ShardingSpec = None) -> Params:
  """{path: LazyArray} → nested params of jax arrays in `dtype`, one array at a time."""
  dt = _np_dtype(dtype)
  return unflatten({p: _place(a, p, dt, sharding) for p, a in sorted(lazy_params.items())})


def _transposed(a: LazyArray) -> LazyArray:
  """A lazy [out, in] → [in, out] view; index is in the transposed frame."""
  def read(index):
    index = tuple(index) + (slice(None),) * (2 - len(index))
    return a.read((index[1], index[0])).T if any(s != slice(None) for s in index) else a.get().T
  return LazyArray(tuple(reversed(a.shape)), a.dtype, read, a.source + " (transposed)")


def _scaled(a: LazyArray, factor: float) -> LazyArray:
  def read(index):
    return (a.read(index).astype(np.float32) * np.float32(factor)).astype(a.dtype)
  return LazyArray(a.shape, a.dtype, read, a.source + f" (x{factor:.6g})")
