"""Our checkpoint format: an Orbax checkpoint under `params/` plus
`spec_cascade_checkpoint.json` holding the T5Config (and optionally a vocabulary
path), so a directory is self-describing. Restores straight onto a mesh sharding.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from spec_cascade.checkpoint_configs import _resolve_config, config_from_dict, config_to_dict
from spec_cascade.checkpoint_io import (Params, ShardingSpec, _brief, _exists_dir, _is_gcs,
                                        _join, _json_object, _np_dtype, _read_bytes,
                                        _sharding_for, _write_text, flatten, unflatten)
from spec_cascade.models import T5Config, T5Model

INFO_FILE = "spec_cascade_checkpoint.json"


def resolve_checkpoint_dir(path: str) -> str:
  """A trainer MODEL_DIR stands for its export/ folder, which is in the checkpoint layout."""
  export = os.path.join(path, "export")
  if "://" not in path and os.path.isfile(os.path.join(export, INFO_FILE)):
    return export
  return path
PARAMS_SUBDIR = "params"
FORMAT_NAME = "spec_cascade.orbax"
FORMAT_VERSION = 1


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
