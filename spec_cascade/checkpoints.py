"""Checkpoints: read T5X, import/export Hugging Face T5, save/restore our own (Orbax).

Three formats, one entry point (`load_params`), which detects the format:

* T5X (`checkpoint_<step>/checkpoint` msgpack + one TensorStore zarr array per
  parameter; format versions 2 and 3; local or `gs://`). Read without t5x.
  The config is inferred from the parameter shapes unless one is given.
* Hugging Face T5 / T5 v1.1 / Flan-T5 / mT5 (`config.json` + `model.safetensors`
  or a sharded `model.safetensors.index.json`). Read with numpy only: the
  safetensors container is parsed by safetensors_reader, so bfloat16 files load
  without torch.
* Ours: an Orbax checkpoint under `params/` plus `spec_cascade_checkpoint.json`
  holding the T5Config (and optionally a vocabulary path), so a directory is
  self-describing. Restores straight onto a mesh sharding.

Every reader is lazy per array: one parameter is read from storage, cast and
placed on its devices before the next is read, so host memory peaks at about
one array, not twice the checkpoint.

Parameter paths are T5X's ('encoder/layers_0/attention/query/kernel', kernels
[in, out]); see docs/checkpoints.md for the Hugging Face name mapping.

This module detects the format and loads; each format lives in its own module
(t5x_checkpoints, hf_t5 with safetensors_reader, orbax_checkpoints), on top of
checkpoint_io (paths, JSON, lazy arrays, placement) and checkpoint_configs
(T5Config from JSON or shapes). Their names are re-exported here.
"""
from __future__ import annotations

import os

import gin

# Every name callers, tests and docs use stays importable from here (the private ones
# too: hf_decoder and convert read and write our files through them).
from spec_cascade.checkpoint_configs import (  # noqa: F401  pylint: disable=unused-import
    check_shapes, config_from_dict, config_to_dict, infer_config)
from spec_cascade.checkpoint_io import (  # noqa: F401  pylint: disable=unused-import
    LazyArray, Params, ShardingSpec, _exists_dir, _is_gcs, _join, _json_object, _kvstore_spec,
    _list_dir, _np_dtype, _read_bytes, _read_json_file, _sharding_for, _transposed, _write_text,
    flatten, materialize, unflatten)
from spec_cascade.hf_t5 import (  # noqa: F401  pylint: disable=unused-import
    _HF_CONFIG_FIX, _HF_INDEX, _HF_TORCH_FILES, _hf_files, _hf_tensors, _hf_torch_only_error,
    config_from_hf, config_to_hf, export_hf, hf_name, load_hf, read_hf_lazy)
from spec_cascade.models import T5Config, T5Model
from spec_cascade.orbax_checkpoints import (  # noqa: F401  pylint: disable=unused-import
    _INFO_FIX, FORMAT_NAME, FORMAT_VERSION, INFO_FILE, PARAMS_SUBDIR, read_checkpoint_info,
    resolve_checkpoint_dir, restore_checkpoint, save_checkpoint)
from spec_cascade.safetensors_reader import (  # noqa: F401  pylint: disable=unused-import
    read_safetensors_lazy)
from spec_cascade.t5x_checkpoints import (  # noqa: F401  pylint: disable=unused-import
    find_t5x_checkpoint, load_t5x, read_t5x_lazy)


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
