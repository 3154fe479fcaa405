"""Checkpoints: read T5X, import/export Hugging Face T5, save/restore our own (Orbax).

Three formats, one entry point (`load_params`), which detects the format:

* T5X (`checkpoint_<step>/checkpoint` msgpack + one TensorStore zarr array per
  parameter; format versions 2 and 3; local or `gs://`). Read without t5x.
  The config is inferred from the parameter shapes unless one is given.
* Hugging Face T5 / T5 v1.1 / Flan-T5 / mT5 (`config.json` + `model.safetensors`
  or a sharded `model.safetensors.index.json`). Read with numpy only: the
  safetensors container is parsed here so bfloat16 files load without torch.
* Ours: an Orbax checkpoint under `params/` plus `spec_cascade_checkpoint.json`
  holding the T5Config (and optionally a vocabulary path), so a directory is
  self-describing. Restores straight onto a mesh sharding.

Every reader is lazy per array: one parameter is read from storage, cast and
placed on its devices before the next is read, so host memory peaks at about
one array, not twice the checkpoint.

Parameter paths are T5X's ('encoder/layers_0/attention/query/kernel', kernels
[in, out]); see docs/checkpoints.md for the Hugging Face name mapping.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, Callable, Iterable, Mapping

import flax
import gin
import jax
import ml_dtypes
import numpy as np

from spec_cascade.models import T5Config, T5Model

Params = Any
# A sharding spec for loading: None (first device), one Sharding for every array,
# a nested dict shaped like the parameter tree of Shardings (or of
# jax.ShapeDtypeStruct with .sharding set), or a callable
# (path 'a/b/kernel', shape) -> Sharding.
ShardingSpec = Any

INFO_FILE = "spec_cascade_checkpoint.json"
PARAMS_SUBDIR = "params"
FORMAT_NAME = "spec_cascade.orbax"
FORMAT_VERSION = 1

# T5Config fields that decide parameter shapes or the network's function. The
# rest (dtype = activation dtype, dropout_rate) are run-time choices a caller may
# override freely when a checkpoint carries its own config.
_ARCH_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                "logits_via_embedding", "relpos_num_buckets", "relpos_max_distance",
                "layer_norm_epsilon")


# -----------------------------------------------------------------------------
# Small helpers: dtypes, trees, configs, paths.

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


def config_to_dict(config: T5Config) -> dict[str, Any]:
  """T5Config → JSON-able dict (tuples become lists)."""
  d = dataclasses.asdict(config)
  d["mlp_activations"] = list(d["mlp_activations"])
  return d


def config_from_dict(d: Mapping[str, Any], where: str = "Checkpoint config") -> T5Config:
  """Inverse of `config_to_dict`; unknown keys are an error (a newer writer).

  `where` names the source (e.g. the JSON file) in error messages.
  """
  if not isinstance(d, Mapping):
    raise ValueError(f"{where}: the config is a {type(d).__name__}, not a mapping of "
                     "T5Config fields; the file is damaged. Re-save the checkpoint.")
  known = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"{where} has fields {unknown} that T5Config does not know; "
                     "was it written by a newer spec_cascade?")
  try:
    return T5Config(**d)
  except (TypeError, ValueError) as e:  # T5Config checks its own field values
    raise ValueError(f"{where}: invalid T5Config ({e}). Fix the value or re-save the "
                     "checkpoint.") from None


def _check_config_agrees(stored: T5Config, given: T5Config, where: str) -> None:
  diffs = [f"{f}: checkpoint {getattr(stored, f)!r} vs given {getattr(given, f)!r}"
           for f in _ARCH_FIELDS if getattr(stored, f) != getattr(given, f)]
  if diffs:
    raise ValueError(f"The config passed for {where} disagrees with the checkpoint's own "
                     f"config ({'; '.join(diffs)}). Pass config=None to use the "
                     "checkpoint's config, or fix the config.")


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


# -----------------------------------------------------------------------------
# Lazy arrays and placement.

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


# -----------------------------------------------------------------------------
# Config inference from parameter shapes (T5X checkpoints carry no config).

def infer_config(shapes: Mapping[str, tuple[int, ...]], **overrides) -> T5Config:
  """T5Config from {param path: shape} in T5X's layout.

  A gated MLP (wi_0, wi_1) is taken as T5 v1.1's ('gelu', 'linear') and a single
  `wi` as v1.0's ('relu',); relpos_max_distance keeps its default (128), which
  the shapes cannot tell. Pass `overrides` (or a config) for anything else.
  """
  required = ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
              "encoder/layers_0/attention/query/kernel")
  missing = [p for p in required if p not in shapes]
  if missing:
    sample = sorted(shapes)[:6]
    raise ValueError(f"Unknown checkpoint layout: no {missing} among the parameters "
                     f"(first few: {sample}). Expected T5X's minimal T5 network layout.")
  vocab, emb = shapes["token_embedder/embedding"]
  heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
  layer_re = {s: re.compile(rf"^{s}/layers_(\d+)/") for s in ("encoder", "decoder")}
  num_layers = {s: len({m.group(1) for p in shapes if (m := r.match(p))})
                for s, r in layer_re.items()}
  mlp = sorted(p.split("/")[3] for p in shapes
               if p.startswith("encoder/layers_0/mlp/") and p.split("/")[3] != "wo")
  if mlp == ["wi"]:
    acts, mlp_dim = ("relu",), shapes["encoder/layers_0/mlp/wi/kernel"][1]
  elif mlp == ["wi_0", "wi_1"]:
    acts, mlp_dim = ("gelu", "linear"), shapes["encoder/layers_0/mlp/wi_0/kernel"][1]
  else:
    raise ValueError(f"Unknown MLP layout {mlp} in encoder/layers_0/mlp; expected 'wi' "
                     "(T5 v1.0) or 'wi_0', 'wi_1' (T5 v1.1). Pass a config.")
  fields = dict(
      vocab_size=int(vocab), emb_dim=int(emb), num_heads=int(heads),
      num_encoder_layers=num_layers["encoder"], num_decoder_layers=num_layers["decoder"],
      head_dim=int(shapes["encoder/layers_0/attention/query/kernel"][1]) // int(heads),
      mlp_dim=int(mlp_dim), mlp_activations=acts, relpos_num_buckets=int(buckets),
      logits_via_embedding="decoder/logits_dense/kernel" not in shapes)
  fields.update(overrides)
  return T5Config(**fields)


def check_shapes(config: T5Config, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
  """Raises ValueError naming the first missing/unexpected/mis-shaped parameter."""
  expected = {p: tuple(s.shape) for p, s in flatten(T5Model(config).abstract_params()).items()}
  missing = sorted(set(expected) - set(shapes))
  extra = sorted(set(shapes) - set(expected))
  if missing:
    raise ValueError(f"{where}: parameter {missing[0]} (shape {expected[missing[0]]}) is "
                     f"missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                     "the checkpoint does not match the config "
                     f"(mlp_activations={config.mlp_activations}, logits_via_embedding="
                     f"{config.logits_via_embedding}).")
  if extra:
    raise ValueError(f"{where}: unexpected parameter(s) {extra[:5]} for config {config}.")
  for p, want in expected.items():
    if tuple(shapes[p]) != want:
      raise ValueError(f"{where}: parameter {p} has shape {tuple(shapes[p])} in the "
                       f"checkpoint, the config expects {want}.")


def _resolve_config(stored: T5Config | None, given: T5Config | None,
                    shapes: Mapping[str, tuple[int, ...]], where: str) -> T5Config:
  if stored is not None and given is not None:
    _check_config_agrees(stored, given, where)
  config = given or stored or infer_config(shapes)
  check_shapes(config, shapes, where)
  return config


# -----------------------------------------------------------------------------
# T5X checkpoints.

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


def _dirname(path: str) -> str:
  return posixpath.dirname(path) if _is_gcs(path) else os.path.dirname(path)


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


# -----------------------------------------------------------------------------
# Hugging Face T5 (safetensors, numpy only).

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


_SAFETENSORS_FIX = ("The file is damaged or truncated (an interrupted download, or a Git LFS "
                    "pointer file: run `git lfs pull`); download it again.")


def _safetensors_error(filename: str, problem: str) -> ValueError:
  return ValueError(f"{filename}: {problem}. {_SAFETENSORS_FIX}")


def _safetensors_header(filename: str) -> tuple[dict[str, Any], int, int]:
  """→ (header JSON, where the data starts, data size), checked against the file size.

  The length prefix is checked before reading so a damaged prefix cannot make
  us read (or allocate) gigabytes, and the data size bounds every tensor.
  """
  if not os.path.isfile(filename):
    raise FileNotFoundError(f"{filename} does not exist (named by the checkpoint directory "
                            "or its model.safetensors.index.json).")
  size = os.path.getsize(filename)
  if size < 8:
    raise _safetensors_error(filename, f"file is {size} bytes, shorter than the 8-byte header "
                             "length that starts every safetensors file")
  with open(filename, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
      raise _safetensors_error(filename, f"header length {n} is larger than the "
                               f"{size - 8} bytes that follow it in the file")
    raw = f.read(n)
  header = _json_object(raw, f"{filename}: safetensors header", _SAFETENSORS_FIX)
  return header, 8 + n, size - 8 - n


def _safetensors_entry(filename: str, name: str, info: Any,
                       data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
  """One header entry → (dtype, shape, begin, end), each field checked."""
  where = f"tensor {name!r}"
  if not isinstance(info, dict):
    raise _safetensors_error(filename, f"{where}: header entry is a "
                             f"{type(info).__name__}, not {{dtype, shape, data_offsets}}")
  dtype_name = info.get("dtype")
  if dtype_name not in _SAFETENSORS_DTYPES:
    raise ValueError(f"{filename}: {where} has dtype {dtype_name!r}, which this reader does "
                     f"not know (known: {sorted(_SAFETENSORS_DTYPES)}). Re-save the "
                     "checkpoint in float32 or bfloat16.")
  dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
  shape, offsets = info.get("shape"), info.get("data_offsets")
  if not _is_int_list(shape) or any(s < 0 for s in shape):
    raise _safetensors_error(filename, f"{where}: shape {shape!r} is not a list of "
                             "non-negative integers")
  if not _is_int_list(offsets) or len(offsets) != 2:
    raise _safetensors_error(filename, f"{where}: data_offsets {offsets!r} is not a pair "
                             "of integers [begin, end]")
  begin, end = offsets
  if begin < 0:
    raise _safetensors_error(filename, f"{where}: data_offsets {offsets} start before the "
                             "data, overlapping the header")
  if end < begin:
    raise _safetensors_error(filename, f"{where}: data_offsets {offsets} are out of order "
                             "(end before begin)")
  if end > data_size:
    raise _safetensors_error(filename, f"{where}: data_offsets {offsets} run past the end "
                             f"of the file (it holds {data_size} bytes of data)")
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if end - begin != nbytes:
    raise _safetensors_error(filename, f"{where}: data_offsets {offsets} span {end - begin} "
                             f"bytes, but shape {tuple(shape)} of {dtype_name} needs {nbytes}")
  return dtype, tuple(shape), begin, end


def _is_int_list(x: Any) -> bool:
  return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _check_no_overlap(filename: str, spans: Mapping[str, tuple[int, int]]) -> None:
  """Two tensors sharing bytes means the header is damaged (writers never do it)."""
  ordered = sorted((b, e, n) for n, (b, e) in spans.items() if e > b)
  for (_, end_a, a), (begin_b, _, b) in zip(ordered, ordered[1:]):
    if begin_b < end_a:
      raise _safetensors_error(filename, f"tensors {a!r} and {b!r} have overlapping "
                               "data_offsets")


def read_safetensors_lazy(filename: str) -> dict[str, LazyArray]:
  """{name: LazyArray} for one .safetensors file, memory-mapped (no torch).

  Format: u64 little-endian header length N, N bytes of JSON {name: {dtype,
  shape, data_offsets: [begin, end]}} (offsets relative to the data after the
  header), then the raw little-endian data. Every entry is checked against the
  file size here, so a damaged file is refused before anything is mapped.
  """
  filename = str(filename)
  header, data_start, data_size = _safetensors_header(filename)
  header.pop("__metadata__", None)
  entries = {name: _safetensors_entry(filename, name, info, data_size)
             for name, info in header.items()}
  _check_no_overlap(filename, {n: (b, e) for n, (_, _, b, e) in entries.items()})
  lazy = {}
  for name, (dtype, shape, begin, end) in entries.items():

    def read(index, begin=begin, end=end, dtype=dtype, shape=shape):
      if end == begin:
        x = np.zeros(shape, dtype)
      else:
        raw = np.memmap(filename, np.uint8, "r", offset=data_start + begin,
                        shape=(end - begin,))
        x = raw.view(dtype).reshape(shape)
      return np.array(x[index] if index else x)

    lazy[name] = LazyArray(shape, dtype, read, f"{filename}:{name}")
  return lazy


# HF activation names → ours. HF's gelu_new and gelu_pytorch_tanh are both the
# tanh approximation, which is our 'gelu'; HF's plain 'gelu' (erf) has no match.
_HF_ACT = {"relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "silu": "silu",
           "swish": "silu"}


def _hf_activations(feed_forward_proj: str) -> tuple[str, ...]:
  """HF `feed_forward_proj` → our mlp_activations (HF maps 'gated-gelu' to gelu_new)."""
  gated, act = _hf_proj_parts(feed_forward_proj)
  ours = _HF_ACT.get(act)
  if ours is None:
    raise ValueError(f"HF activation {act!r} (feed_forward_proj={feed_forward_proj!r}) has no "
                     "equivalent here: our 'gelu' is the tanh approximation (HF gelu_new); "
                     "supported: relu, gated-gelu, gated-silu, gated-relu.")
  return (ours, "linear") if gated else (ours,)


def _hf_proj_parts(feed_forward_proj: Any) -> tuple[bool, str]:
  """'gated-gelu' → (True, 'gelu_new'), 'relu' → (False, 'relu'): what HF itself derives."""
  if not isinstance(feed_forward_proj, str):
    raise ValueError(f"HF feed_forward_proj {feed_forward_proj!r} is not a string; expected "
                     "'relu', 'gated-gelu', 'gated-silu', ...")
  parts = feed_forward_proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f"Unknown HF feed_forward_proj {feed_forward_proj!r}; expected "
                     "'relu', 'gated-gelu', 'gated-silu', ...")
  act = parts[-1]
  return gated, ("gelu_new" if gated and act == "gelu" else act)


def _check_hf_activation_fields(hf: Mapping[str, Any], where: str) -> None:
  """Refuses a config.json whose dense_act_fn / is_gated_act contradict feed_forward_proj.

  transformers lets the stored dense_act_fn and is_gated_act override what it
  derives from feed_forward_proj, so when they disagree HF would run a different
  MLP than the one we would build from feed_forward_proj alone.
  """
  proj = hf.get("feed_forward_proj", "relu")
  gated, act = _hf_proj_parts(proj)
  dense = hf.get("dense_act_fn")
  # Different HF names for one function (gelu_new / gelu_pytorch_tanh) agree.
  same = dense == act or (isinstance(dense, str) and _HF_ACT.get(dense) is not None
                          and _HF_ACT.get(dense) == _HF_ACT.get(act))
  if dense is not None and not same:
    raise ValueError(f"{where}: dense_act_fn is {dense!r} but feed_forward_proj {proj!r} "
                     f"means {act!r}; the two disagree, so which MLP the checkpoint was "
                     "trained with is unclear. Fix config.json so they agree (e.g. "
                     "'gated-gelu' with 'gelu_new', 'relu' with 'relu').")
  is_gated = hf.get("is_gated_act")
  if is_gated is not None and is_gated is not gated:
    raise ValueError(f"{where}: is_gated_act is {is_gated!r} but feed_forward_proj {proj!r} "
                     f"means is_gated_act={gated}; the two disagree. Fix config.json so "
                     "they agree.")


# Special token ids our decoding hard-codes (T5's SentencePiece vocabularies).
_HF_TOKEN_IDS = {"decoder_start_token_id": (0, "the decoder's first input token"),
                 "eos_token_id": (1, "end of sequence"), "pad_token_id": (0, "padding")}


def _check_hf_token_ids(hf: Mapping[str, Any], where: str) -> None:
  """Refuses special token ids other than ours: decoding would silently use ours."""
  for field, (want, meaning) in _HF_TOKEN_IDS.items():
    value = hf.get(field)
    if value is None:
      continue  # not stated: nothing contradicts ours
    # Newer transformers may store eos_token_id as a list; [1] is fine.
    ok = (value == want or value == [want]) and not isinstance(value, bool)
    if not ok:
      raise ValueError(f"{where}: {field} is {value!r}, but this T5 implementation uses "
                       f"{want} ({meaning}) as in every T5 / T5 v1.1 / Flan-T5 / mT5 "
                       "checkpoint; a model with other special tokens cannot be decoded "
                       "here. Use a standard T5 checkpoint, or fix config.json if the value "
                       "is a mistake.")


def _hf_field(hf: Mapping[str, Any], key: str, default: Any, cast: type, where: str) -> Any:
  """hf[key] (or default) as `cast`; a value of the wrong kind names the field."""
  value = hf.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      cast is int and not float(value).is_integer()):
    kind = "an integer" if cast is int else "a number"
    raise ValueError(f"{where}: {key} is {value!r}, not {kind}; fix config.json.")
  return cast(value)


def config_from_hf(hf: Mapping[str, Any], *, logits_via_embedding: bool,
                   where: str = "HF config.json") -> T5Config:
  """A HF T5 config.json dict → T5Config.

  The output-layer layout is not in config.json alone (it also depends on
  whether lm_head is stored), so the caller passes `logits_via_embedding`.
  Fields that contradict each other or our special tokens are refused, never
  reinterpreted; `where` (the file) is named in every error.
  """
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise ValueError(f"Unknown layout: HF model_type {model_type!r} in {where}; T5 and mT5 "
                     "are supported (UMT5's per-layer position biases are not).")
  if "vocab_size" not in hf:
    raise ValueError(f"{where}: no vocab_size; a T5 config.json always has one. The file "
                     "is damaged or not a T5 config.")
  _check_hf_token_ids(hf, where)
  num_layers = _hf_field(hf, "num_layers", 6, int, where)
  try:
    _check_hf_activation_fields(hf, where)
    acts = _hf_activations(hf.get("feed_forward_proj", "relu"))
    return T5Config(
        vocab_size=_hf_field(hf, "vocab_size", None, int, where),
        emb_dim=_hf_field(hf, "d_model", 512, int, where),
        num_heads=_hf_field(hf, "num_heads", 8, int, where), num_encoder_layers=num_layers,
        num_decoder_layers=_hf_field(hf, "num_decoder_layers", None, int, where)
        if hf.get("num_decoder_layers") else num_layers,
        head_dim=_hf_field(hf, "d_kv", 64, int, where),
        mlp_dim=_hf_field(hf, "d_ff", 2048, int, where), mlp_activations=acts,
        dropout_rate=_hf_field(hf, "dropout_rate", 0.0, float, where),
        logits_via_embedding=logits_via_embedding,
        relpos_num_buckets=_hf_field(hf, "relative_attention_num_buckets", 32, int, where),
        relpos_max_distance=_hf_field(hf, "relative_attention_max_distance", 128, int, where),
        layer_norm_epsilon=_hf_field(hf, "layer_norm_epsilon", 1e-6, float, where))
  except ValueError as e:
    if where in str(e):
      raise
    raise ValueError(f"{where}: {e}") from None


def _hf_scales_output(hf: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before lm_head.

  transformers 5 saves `scale_decoder_outputs`; older configs say it through
  `tie_word_embeddings` (absent = True, the T5 v1.0 default).
  """
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False


_HF_ATTN = {"query": "q", "key": "k", "value": "v", "out": "o"}
# (our layer sub-path prefix, HF `layer.N` index and module) per stack.
_HF_ENC = {"pre_attention_layer_norm": "0.layer_norm", "attention": "0.SelfAttention",
           "pre_mlp_layer_norm": "1.layer_norm", "mlp": "1.DenseReluDense"}
_HF_DEC = {"pre_self_attention_layer_norm": "0.layer_norm", "self_attention": "0.SelfAttention",
           "pre_cross_attention_layer_norm": "1.layer_norm",
           "encoder_decoder_attention": "1.EncDecAttention",
           "pre_mlp_layer_norm": "2.layer_norm", "mlp": "2.DenseReluDense"}


def hf_name(path: str) -> tuple[str, bool]:
  """Our param path → (HF tensor name, transpose?). Raises on an unknown path."""
  fixed = {
      "token_embedder/embedding": ("shared.weight", False),
      "encoder/relpos_bias/rel_embedding":
          ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
      "decoder/relpos_bias/rel_embedding":
          ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
      "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
      "decoder/decoder_norm/scale": ("decoder.final_layer_norm.weight", False),
      "decoder/logits_dense/kernel": ("lm_head.weight", True),
  }
  if path in fixed:
    return fixed[path]
  m = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(\w+)/(\w+)/(kernel|scale)", path)
  m_norm = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(\w+)/scale", path)
  table = None
  if m_norm:
    stack, i, module = m_norm.groups()
    table = _HF_ENC if stack == "encoder" else _HF_DEC
    if module in table and table[module].endswith("layer_norm"):
      return f"{stack}.block.{i}.layer.{table[module]}.weight", False
  elif m:
    stack, i, module, sub, _ = m.groups()
    table = _HF_ENC if stack == "encoder" else _HF_DEC
    if module in table:
      hf_sub = sub if module == "mlp" else _HF_ATTN.get(sub)
      if hf_sub is not None:
        return f"{stack}.block.{i}.layer.{table[module]}.{hf_sub}.weight", True
  raise ValueError(f"No Hugging Face name for parameter {path}.")


# HF tensors that carry no information of their own: the embeddings tied to
# `shared`, and a cross-attention bias HF never uses.
_HF_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$|"
                         r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias")


_HF_INDEX = "model.safetensors.index.json"
# PyTorch pickles: named so a directory holding only these gets the conversion hint.
_HF_TORCH_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HF_CONFIG_FIX = "Download config.json again, or re-export the checkpoint."


def _hf_torch_only_error(path: str) -> FileNotFoundError:
  present = [f for f in _HF_TORCH_FILES if os.path.isfile(os.path.join(path, f))]
  found = f" (found {', '.join(present)})" if present else ""
  return FileNotFoundError(
      f"No model.safetensors (or {_HF_INDEX}) in {path}{found}; PyTorch .bin checkpoints are "
      "not read (convert them to safetensors: with transformers, "
      "T5ForConditionalGeneration.from_pretrained(path).save_pretrained(out, "
      "safe_serialization=True)).")


def _hf_index_files(path: str, index: str) -> list[str]:
  """The shard files a model.safetensors.index.json names, all present."""
  fix = f"Download {_HF_INDEX} again."
  weight_map = _read_json_file(index, fix).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index} has no 'weight_map' object ({{tensor name: shard file}}); "
                     f"the file is damaged or not a safetensors index. {fix}")
  bad = sorted(str(v) for v in weight_map.values() if not isinstance(v, str) or not v)
  if bad:
    raise ValueError(f"{index}: weight_map has shard names {bad[:3]} that are not file "
                     f"names. {fix}")
  files = sorted(set(weight_map.values()))
  missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"{index} names shards that are missing: {missing}.")
  return [os.path.join(path, f) for f in files]


def _hf_files(path: str) -> list[str]:
  index = os.path.join(path, _HF_INDEX)
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index):
    return _hf_index_files(path, index)
  if os.path.isfile(single):
    return [single]
  others = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if others:
    return [os.path.join(path, f) for f in others]
  raise _hf_torch_only_error(path)


def _hf_tensors(files: Iterable[str]) -> dict[str, LazyArray]:
  """All tensors of the shards; a name in two shards is refused (which one is right?)."""
  tensors: dict[str, LazyArray] = {}
  origin: dict[str, str] = {}
  for file in files:
    for name, lazy in read_safetensors_lazy(file).items():
      if name in tensors:
        raise ValueError(f"Tensor {name!r} is stored twice: in {origin[name]} and in {file}; "
                         "the shards come from different exports. Download the checkpoint "
                         "again.")
      tensors[name], origin[name] = lazy, file
  return tensors


def read_hf_lazy(path: str) -> tuple[dict[str, LazyArray], T5Config]:
  """{our param path: LazyArray (already in our layout)} and the derived config."""
  path = str(path)
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise FileNotFoundError(f"No config.json in {path}; not a Hugging Face checkpoint dir.")
  hf = _read_json_file(cfg_file, _HF_CONFIG_FIX)
  tensors = _hf_tensors(_hf_files(path))
  if "shared.weight" not in tensors:
    if "encoder.embed_tokens.weight" in tensors:  # some exports keep only this copy
      tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    else:
      raise ValueError(f"{path}: no 'shared.weight' tensor; unknown layout.")
  scale = _hf_scales_output(hf)
  head = tensors.pop("lm_head.weight", None)
  tied = head is None or (scale and np.array_equal(head.get(), tensors["shared.weight"].get()))
  config = config_from_hf(hf, logits_via_embedding=tied and scale, where=cfg_file)

  lazy: dict[str, LazyArray] = {}
  used = set()
  for p in flatten(T5Model(config).abstract_params()):
    if p == "decoder/logits_dense/kernel":
      continue
    name, transpose = hf_name(p)
    if name not in tensors:
      raise ValueError(f"{path}: HF tensor {name} (for parameter {p}) is missing.")
    lazy[p] = _transposed(tensors[name]) if transpose else tensors[name]
    used.add(name)
  if not config.logits_via_embedding:
    # The untied output layer: lm_head if stored, else the embedding (a
    # transformers-5 model ties lm_head to `shared` even for v1.1). A scaled
    # untied head (possible in HF) folds d_model**-0.5 into the kernel.
    src = _transposed(head if head is not None else tensors["shared.weight"])
    lazy["decoder/logits_dense/kernel"] = (
        _scaled(src, config.emb_dim ** -0.5) if scale else src)
  extra = sorted(n for n in tensors if n not in used and not _HF_IGNORED.match(n)
                 and n != "shared.weight")
  if extra:
    raise ValueError(f"{path}: unexpected HF tensors {extra[:5]} — unknown layout (e.g. "
                     "per-layer position biases as in UMT5).")
  return lazy, config


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


def load_hf(path: str, config: T5Config | None = None, dtype="float32",
            sharding: ShardingSpec = None) -> tuple[Params, T5Config]:
  """Imports a HF T5 directory → (params in our layout, config from config.json)."""
  lazy, stored = read_hf_lazy(path)
  config = _resolve_config(stored, config, {p: a.shape for p, a in lazy.items()},
                           f"HF checkpoint {path}")
  return materialize(lazy, dtype, sharding), config


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """T5Config → a HF T5 config.json dict."""
  acts = tuple(config.mlp_activations)
  if acts == ("relu",):
    proj = "relu"
  elif len(acts) == 2 and acts[1] == "linear" and acts[0] in ("gelu", "gelu_new", "silu", "relu"):
    proj = "gated-" + {"gelu_new": "gelu"}.get(acts[0], acts[0])
  else:
    raise ValueError(f"mlp_activations={acts} has no HF T5 feed_forward_proj equivalent.")
  tied = bool(config.logits_via_embedding)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
      "d_ff": config.mlp_dim, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relpos_num_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0, "feed_forward_proj": proj,
      "tie_word_embeddings": tied, "scale_decoder_outputs": tied,
      "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
      "decoder_start_token_id": 0, "use_cache": True,
  }


def export_hf(params: Params, config: T5Config, out_dir: str, dtype="float32") -> None:
  """Writes params as a HF T5 directory (config.json + model.safetensors)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  T5Model(config).check_params(params)
  dt = _np_dtype(dtype)
  tensors = {}
  for p, x in flatten(params).items():
    name, transpose = hf_name(p)
    x = np.asarray(jax.device_get(x)).astype(dt)
    tensors[name] = np.ascontiguousarray(x.T if transpose else x)
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_to_hf(config), f, indent=2)


# -----------------------------------------------------------------------------
# Our format: Orbax + spec_cascade_checkpoint.json.

def _write_text(path: str, text: str) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(path).write_text(text)


def save_checkpoint(path: str, params: Params, config: T5Config,
                    vocabulary_path: str | None = None, *, force: bool = False,
                    extra_info: Mapping[str, Any] | None = None) -> None:
  """Saves params (Orbax, under path/params) and the config JSON next to them.

  Sharded params are written shard by shard. `force` replaces an existing
  checkpoint; without it an existing one is an error.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  T5Model(config).check_params(params)
  params_dir = _join(str(path), PARAMS_SUBDIR)
  if not _is_gcs(path):
    path = os.path.abspath(path)
    params_dir = os.path.join(path, PARAMS_SUBDIR)
    if os.path.exists(params_dir) and not force:
      raise FileExistsError(f"{params_dir} exists; pass force=True to overwrite it.")
    os.makedirs(path, exist_ok=True)
  dtypes = {str(np.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(params)}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, params, force=force)
    ckptr.wait_until_finished()
  info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
          "t5_config": config_to_dict(config), "param_dtypes": sorted(dtypes),
          "vocabulary_path": vocabulary_path, **dict(extra_info or {})}
  if jax.process_index() == 0:
    _write_text(_join(str(path), INFO_FILE), json.dumps(info, indent=2) + "\n")


_INFO_FIX = ("Restore the file from a backup, or convert/save the checkpoint again "
             "(python -m spec_cascade.convert).")


def read_checkpoint_info(path: str) -> dict[str, Any]:
  """The JSON of one of our checkpoints; 'config' holds the parsed T5Config and a
  relative 'vocabulary_path' is resolved against the checkpoint dir."""
  info_file = _join(str(path), INFO_FILE)
  raw = _read_bytes(info_file)
  if raw is None:
    raise FileNotFoundError(f"No {INFO_FILE} in {path}; not a spec_cascade checkpoint.")
  info = _json_object(raw, info_file, _INFO_FIX)
  if info.get("format") != FORMAT_NAME or not _is_version(info.get("format_version", 0)) or (
      info.get("format_version", 0) > FORMAT_VERSION):
    raise ValueError(f"{info_file}: format {info.get('format')!r} version "
                     f"{info.get('format_version')!r} is not one this code reads "
                     f"({FORMAT_NAME!r} <= {FORMAT_VERSION}).")
  if "decoder_config" in info and "t5_config" not in info:
    # Written by hf_decoder.save_decoder_checkpoint (infer / sweep load these through
    # hf_decoder.load_decoder).
    raise ValueError(f"{info_file}: a decoder-only checkpoint (Llama/Gemma/Qwen2 family); "
                     "load it with spec_cascade.hf_decoder.load_decoder (docs/decoder_only.md).")
  if not isinstance(info.get("t5_config"), dict):
    raise ValueError(f"{info_file}: 't5_config' is missing or not an object, so the model's "
                     f"shape is unknown. {_INFO_FIX}")
  info["config"] = config_from_dict(info["t5_config"], where=f"{info_file}: t5_config")
  vocab = info.get("vocabulary_path")
  if vocab is not None and not isinstance(vocab, str):
    raise ValueError(f"{info_file}: vocabulary_path is {vocab!r}, not a path string. "
                     f"{_INFO_FIX}")
  if vocab and not _is_gcs(vocab) and not os.path.isabs(vocab):
    info["vocabulary_path"] = _join(str(path), vocab)
  return info


def _is_version(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


_PARAMS_FIX = ("The checkpoint was copied or saved incompletely; copy it again, or "
               "convert/save it again.")


def _orbax_shapes(params_dir: str) -> dict[str, tuple[int, ...]]:
  """{param path: shape} from Orbax's metadata; damage there is named, not Orbax's error."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(params_dir)
  except Exception as e:  # pylint: disable=broad-except
    # Orbax raises FileNotFoundError, ValueError, json errors, ... by what is damaged.
    raise ValueError(f"{params_dir}: cannot read the Orbax parameter metadata "
                     f"({_brief(e)}); the params folder is damaged. "
                     f"{_PARAMS_FIX}") from e
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, Mapping) or not tree:
    raise ValueError(f"{params_dir}: holds no readable Orbax parameter metadata (_METADATA "
                     f"is missing or damaged); the params folder is empty or damaged. "
                     f"{_PARAMS_FIX}")
  return {p: tuple(m.shape) for p, m in flatten(tree).items()}


def _params_dir(path: str, has_info: bool) -> str:
  """Where the Orbax arrays are: path/params, or path itself for a bare Orbax dir.

  With our JSON present the params folder must exist: falling back to the
  checkpoint dir would hand Orbax a folder of the wrong kind and a baffling error.
  """
  params_dir = _join(path, PARAMS_SUBDIR)
  if _exists_dir(params_dir):
    return params_dir
  if has_info:
    raise FileNotFoundError(f"{params_dir} is missing: {path} has {INFO_FILE} but no "
                            f"{PARAMS_SUBDIR}/ folder with the arrays. {_PARAMS_FIX}")
  return path


def restore_checkpoint(path: str, config: T5Config | None = None, dtype="float32",
                       sharding: ShardingSpec = None) -> tuple[Params, T5Config]:
  """Restores one of our checkpoints, each array directly onto its sharding.

  `sharding` as in `load_params`; the target handed to Orbax is a tree of
  jax.ShapeDtypeStruct(shape, dtype, sharding=...), so every host reads only
  its shards and nothing is gathered.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Orbax reads a relative folder as nothing at all (its metadata comes back None).
  path = str(path) if _is_gcs(str(path)) else os.path.abspath(str(path))
  stored = None
  has_info = _read_bytes(_join(path, INFO_FILE)) is not None
  if has_info:
    stored = read_checkpoint_info(path)["config"]
  elif config is None:
    raise ValueError(f"{path} is an Orbax checkpoint without {INFO_FILE}; pass config=.")
  params_dir = _params_dir(path, has_info)
  config = _resolve_config(stored, config, _orbax_shapes(params_dir), f"checkpoint {path}")
  dt = _np_dtype(dtype)
  abstract = flatten(T5Model(config).abstract_params())
  target = unflatten({p: jax.ShapeDtypeStruct(s.shape, dt,
                                              sharding=_sharding_for(sharding, p, s.shape))
                      for p, s in abstract.items()})
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(params_dir, target)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # The metadata read fine, so this is damaged array data (or a lost file);
    # Orbax raises a bare Exception for it.
    raise ValueError(f"{params_dir}: Orbax could not restore the arrays "
                     f"({_brief(e)}); the array data is damaged or incomplete. "
                     f"{_PARAMS_FIX}") from e
  return params, config


# -----------------------------------------------------------------------------
# Detection and the entry points.

def _looks_hf(path: str) -> bool:
  """A local dir with HF weights: safetensors, or PyTorch .bin files (which the HF
  reader then refuses with a conversion hint rather than 'unknown layout')."""
  if _is_gcs(path) or not os.path.isdir(path):
    return False
  names = os.listdir(path)
  weights = any(f.endswith(".safetensors") or f == _HF_INDEX for f in names)
  torch = any(f in _HF_TORCH_FILES for f in names)
  return (weights or torch) and "config.json" in names


def detect_format(path: str) -> str:
  """'orbax' | 'hf' | 't5x' for a checkpoint path; raises if none matches."""
  path = str(path).rstrip("/")
  if not _is_gcs(path) and not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint path {path!r} does not exist.")
  if _read_bytes(_join(path, INFO_FILE)) is not None:
    return "orbax"
  if _looks_hf(path):
    return "hf"
  try:
    find_t5x_checkpoint(path)
    return "t5x"
  except FileNotFoundError:
    pass
  if not _is_gcs(path) and os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, m)) for m in ("_METADATA", "_CHECKPOINT_METADATA")):
    return "orbax"
  if not _is_gcs(path) and os.path.isdir(path) and any(
      os.path.isfile(os.path.join(path, f)) for f in _HF_TORCH_FILES):
    raise _hf_torch_only_error(path)  # PyTorch weights without config.json: same remedy
  listing = _list_dir(path)[:10] if _exists_dir(path) else []
  raise ValueError(
      f"Unknown checkpoint layout at {path!r} (contents: {listing}). Expected one of: "
      f"a spec_cascade checkpoint ({INFO_FILE} + {PARAMS_SUBDIR}/), a Hugging Face dir "
      "(config.json + model.safetensors), or a T5X checkpoint ('checkpoint' msgpack or "
      "checkpoint_<step>/ subdirs).")


def load_params(path: str, config: T5Config | None = None, dtype="float32",
                sharding: ShardingSpec = None) -> tuple[Params, T5Config]:
  """Loads any supported checkpoint → (params, config).

  path: a T5X checkpoint (file, checkpoint_<step> dir, or model dir: latest step),
    a HF T5 dir, or one of ours. Local or gs:// (T5X and ours).
  config: optional; checked against the checkpoint's own config (shape fields) and
    returned in its place, so run-time fields (activation dtype, dropout) can be set.
    T5X checkpoints carry no config: it is inferred from the shapes if None.
  dtype: parameter dtype, 'float32' or 'bfloat16'.
  sharding: None (first device), a Sharding for all arrays, a nested dict of
    Shardings like the params, or callable(path, shape) -> Sharding.
  """
  fmt = detect_format(path)
  loader = {"t5x": load_t5x, "hf": load_hf, "orbax": restore_checkpoint}[fmt]
  return loader(path, config=config, dtype=dtype, sharding=sharding)


@gin.configurable(module="spec_cascade.checkpoints")
def load_model(path: str = gin.REQUIRED, config: T5Config | None = None, dtype="float32",
               sharding: ShardingSpec = None) -> tuple[T5Model, Params]:
  """`load_params` plus the model: → (T5Model(config), params)."""
  params, config = load_params(path, config=config, dtype=dtype, sharding=sharding)
  return T5Model(config), params


def check_same_vocabulary(drafter_config: T5Config, verifier_config: T5Config) -> None:
  """Refuses drafter/verifier pairs whose vocabularies differ in size."""
  if drafter_config.vocab_size != verifier_config.vocab_size:
    raise ValueError(
        f"Drafter vocab_size {drafter_config.vocab_size} != verifier vocab_size "
        f"{verifier_config.vocab_size}: speculative decoding and cascades compare the two "
        "models' distributions token by token, so both must use one vocabulary. Pick a "
        "pair trained with the same SentencePiece model (e.g. two T5 v1.1 sizes).")


@gin.configurable(module="spec_cascade.checkpoints")
def load_drafter_and_verifier(
    drafter_path: str = gin.REQUIRED, verifier_path: str = gin.REQUIRED,
    drafter_config: T5Config | None = None, verifier_config: T5Config | None = None,
    dtype="float32", drafter_sharding: ShardingSpec = None,
    verifier_sharding: ShardingSpec = None,
) -> tuple[tuple[T5Model, Params], tuple[T5Model, Params]]:
  """Loads both models (gin: %DRAFTER_CHECKPOINT_PATH, %VERIFIER_CHECKPOINT_PATH) and
  checks they share one vocabulary. → ((drafter, params), (verifier, params))."""
  drafter = load_model(drafter_path, config=drafter_config, dtype=dtype,
                       sharding=drafter_sharding)
  verifier = load_model(verifier_path, config=verifier_config, dtype=dtype,
                        sharding=verifier_sharding)
  check_same_vocabulary(drafter[0].config, verifier[0].config)
  return drafter, verifier
