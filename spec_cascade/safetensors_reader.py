"""The safetensors container read with numpy alone (no torch), so bfloat16 files load
without it; every header entry is checked against the file before anything is mapped.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from spec_cascade.checkpoint_io import LazyArray, _json_object

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
