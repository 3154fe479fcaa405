"""T5X checkpoints, read without t5x: `checkpoint_<step>/checkpoint` msgpack plus one
TensorStore zarr array per parameter (format versions 2 and 3; local or gs://).

The config is inferred from the parameter shapes unless one is given; optimizer
state is never touched.
"""
from __future__ import annotations

import os
import posixpath
import re
from typing import Any, Mapping

import flax
import ml_dtypes
import numpy as np

from spec_cascade.checkpoint_configs import _resolve_config
from spec_cascade.checkpoint_io import (LazyArray, Params, ShardingSpec, _brief, _dirname,
                                        _is_gcs, _join, _kvstore_spec, _list_dir, _read_bytes,
                                        materialize)
from spec_cascade.models import T5Config

_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


def find_t5x_checkpoint(path: str) -> str:
  """Path to the msgpack `checkpoint` file for a T5X path.

  `path` may be the msgpack file itself, a `checkpoint_<step>` dir, or a model
  dir holding `checkpoint_<step>` subdirs (the largest step is picked).
  """
  path = str(path).rstrip("/")
  if posixpath.basename(path) == "checkpoint" and _read_bytes(path) is not None:
    return path
  if _read_bytes(_join(path, "checkpoint")) is not None:
    return _join(path, "checkpoint")
  steps = sorted((int(m.group(1)), name) for name in _list_dir(path)
                 if (m := _STEP_DIR.match(name)))
  for _, name in reversed(steps):
    candidate = _join(path, name, "checkpoint")
    if _read_bytes(candidate) is not None:
      return candidate
  raise FileNotFoundError(
      f"No T5X checkpoint at {path!r}: expected a msgpack file 'checkpoint' there or in "
      "a 'checkpoint_<step>' subdirectory.")


def _is_ts_spec(leaf) -> bool:
  return isinstance(leaf, dict) and "driver" in leaf and ("kvstore" in leaf or "path" in leaf)


def _t5x_open_zarr(spec: dict, ckpt_file: str, name: str):
  """Starts opening one parameter's zarr array → (TensorStore future, absolute path)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  if "kvstore" in spec and isinstance(spec["kvstore"], dict) and "path" in spec["kvstore"]:
    rel = spec["kvstore"]["path"]
  elif "path" in spec:  # tensorstore < 0.1.14 wrote the path at the top level
    rel = spec["path"]
  else:
    rel = None
  if not isinstance(rel, str) or not rel:
    raise ValueError(f"T5X checkpoint {ckpt_file}: parameter {name} has a TensorStore spec "
                     f"without a usable path ({spec}); the msgpack is damaged. Copy the "
                     "checkpoint again.")
  # Rebuild the kvstore for where the checkpoint lives now: T5X writes relative
  # paths (and a dummy GCS bucket) so checkpoints can move.
  where = _join(_dirname(ckpt_file), rel)
  open_spec = {"driver": spec.get("driver", "zarr"), "kvstore": _kvstore_spec(where)}
  return ts.open(open_spec, open=True, read=True), where




def _t5x_open_error(ckpt_file: str, name: str, where: str, error: Exception) -> Exception:
  """Why one array would not open: its folder is gone, or what is there is damaged.

  Locally the folder's absence is checked directly; GCS has no folders, so there
  TensorStore's NOT_FOUND stands for a missing array.
  """
  missing = "NOT_FOUND" in str(error) if _is_gcs(where) else not os.path.isdir(where)
  if missing:
    return FileNotFoundError(
        f"T5X checkpoint {ckpt_file}: the array of parameter {name} is missing (no "
        f"{where}); the checkpoint was copied or saved incompletely. Copy the whole "
        "checkpoint_<step> directory again.")
  return ValueError(
      f"T5X checkpoint {ckpt_file}: the array of parameter {name} at {where} cannot be "
      f"opened ({_brief(error)}); its zarr metadata (.zarray) is missing or damaged. Copy the "
      "checkpoint again.")


def _t5x_lazy_zarr(spec: dict, opening, where: str, version: int, name: str,
                   ckpt_file: str) -> LazyArray:
  try:
    store = opening.result()
  except Exception as e:  # pylint: disable=broad-except
    raise _t5x_open_error(ckpt_file, name, where, e) from e
  shape = tuple(int(s) for s in store.shape)
  meta_shape = spec.get("metadata", {}).get("shape")
  if meta_shape is not None and tuple(int(s) for s in meta_shape) != shape:
    raise ValueError(f"T5X checkpoint {ckpt_file}: parameter {name}: msgpack says shape "
                     f"{tuple(meta_shape)}, the array on disk ({where}) has {shape}; the two "
                     "come from different checkpoints. Copy the checkpoint again.")
  stored = np.dtype(store.dtype.numpy_dtype)
  as_bf16 = stored == np.uint16
  if as_bf16 and version >= 3:
    raise ValueError(f"T5X parameter {name}: uint16 array in a version-{version} "
                     f"checkpoint ({ckpt_file}); only version 2 stored bfloat16 as uint16.")

  def read(index):
    # Chunk data is only touched here, so damage inside a chunk shows up now.
    try:
      x = store[index].read().result() if index else store.read().result()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"T5X checkpoint {ckpt_file}: reading parameter {name} from {where} "
                       f"failed ({_brief(e)}); a chunk file is damaged or truncated. Copy the "
                       "checkpoint again.") from e
    return x.view(ml_dtypes.bfloat16) if as_bf16 else x

  return LazyArray(shape, np.dtype(ml_dtypes.bfloat16) if as_bf16 else stored, read, where)


def _t5x_lazy_inline(x, version: int, name: str) -> LazyArray:
  x = np.asarray(x)
  if x.dtype == np.uint16 and version == 2:
    x = x.view(ml_dtypes.bfloat16)
  return LazyArray(tuple(x.shape), x.dtype, lambda index: x[index] if index else x, name)


def _t5x_msgpack(ckpt_file: str) -> dict[str, Any]:
  """The decoded msgpack `checkpoint` file; a damaged one is named, not a msgpack error."""
  raw = _read_bytes(ckpt_file)
  fix = "Copy the checkpoint again (or pick another checkpoint_<step>)."
  if not raw:
    raise ValueError(f"T5X checkpoint {ckpt_file} is an empty file; an interrupted save or "
                     f"copy. {fix}")
  try:
    contents = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # pylint: disable=broad-except
    # msgpack raises ValueError/FormatError/ExtraData/... for truncated or garbled bytes.
    raise ValueError(f"T5X checkpoint {ckpt_file} cannot be decoded as msgpack "
                     f"({_brief(e)}); the file is truncated or damaged. "
                     f"{fix}") from None
  if not isinstance(contents, dict):
    raise ValueError(f"{ckpt_file} is not a T5X checkpoint (msgpack holds a "
                     f"{type(contents).__name__}, not a dict).")
  return contents


def _t5x_version(contents: Mapping[str, Any], ckpt_file: str) -> int:
  version = contents.get("version", 0)
  if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
    raise ValueError(f"{ckpt_file}: T5X checkpoint 'version' is {version!r}, not an "
                     "integer; the msgpack is damaged or not from T5X.")
  if version not in (2, 3):
    raise ValueError(f"{ckpt_file}: T5X checkpoint version {version} is not supported "
                     "(versions 2 and 3 are; T5X itself refuses versions below 2).")
  return int(version)


def read_t5x_lazy(path: str) -> dict[str, LazyArray]:
  """{param path: LazyArray} for a T5X checkpoint; optimizer state is not touched."""
  ckpt_file = find_t5x_checkpoint(path)
  contents = _t5x_msgpack(ckpt_file)
  version = _t5x_version(contents, ckpt_file)
  try:
    target = contents["optimizer"]["target"]
  except (KeyError, TypeError):
    raise ValueError(f"{ckpt_file}: no 'optimizer/target' in the msgpack (keys "
                     f"{sorted(map(str, contents))}); unknown layout.") from None
  if not isinstance(target, dict) or not target:
    raise ValueError(f"{ckpt_file}: 'optimizer/target' is "
                     f"{'empty' if isinstance(target, dict) else type(target).__name__}, not "
                     "a tree of parameters; the msgpack is damaged or not from T5X.")
  flat = flax.traverse_util.flatten_dict(target, sep="/", is_leaf=lambda _, v: _is_ts_spec(v))
  # Open every array's metadata concurrently (one round trip each on GCS).
  opening = {name: _t5x_open_zarr(leaf, ckpt_file, name)
             for name, leaf in flat.items() if _is_ts_spec(leaf)}
  lazy = {}
  for name, leaf in flat.items():
    if _is_ts_spec(leaf):
      lazy[name] = _t5x_lazy_zarr(leaf, *opening[name], version, name, ckpt_file)
    elif isinstance(leaf, (np.ndarray, np.generic)):
      lazy[name] = _t5x_lazy_inline(leaf, version, name)
    else:
      raise ValueError(f"{ckpt_file}: parameter {name} is a {type(leaf).__name__}, neither "
                       "an array nor a TensorStore spec.")
  return lazy


def load_t5x(path: str, config: T5Config | None = None, dtype="float32",
             sharding: ShardingSpec = None) -> tuple[Params, T5Config]:
  """Reads a T5X checkpoint → (params in `dtype`, config inferred unless given)."""
  lazy = read_t5x_lazy(path)
  config = _resolve_config(None, config, {p: a.shape for p, a in lazy.items()},
                           f"T5X checkpoint {path}")
  return materialize(lazy, dtype, sharding), config
