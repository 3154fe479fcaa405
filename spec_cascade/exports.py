"""Parameters that cross a training run's edges: the export it writes, and the initial and
teacher parameters it starts from.

The export uses the self-describing layout of spec_cascade.checkpoints
("spec_cascade.orbax" v1: params/ + spec_cascade_checkpoint.json), so
checkpoints.load_params / load_model read it directly; it is written here
without importing that module so that training does not depend on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from spec_cascade import pod
from spec_cascade.models import T5Config, T5Model

Params = Any

EXPORT_INFO_FILE = "spec_cascade_checkpoint.json"
_EXPORT_FORMAT = {"format": "spec_cascade.orbax", "format_version": 1}


def _is_export_dir(path) -> bool:
  from etils import epath  # pylint: disable=import-outside-toplevel
  p = epath.Path(path)
  return (p / EXPORT_INFO_FILE).exists() and (p / "params").exists()


def export_params(export_dir, params: Params, config: T5Config,
                  vocabulary_path: str | None = None,
                  extra: Mapping[str, Any] | None = None) -> None:
  """Writes float32 params (Orbax, export_dir/params) and the config JSON
  (export_dir/spec_cascade_checkpoint.json), replacing an earlier export."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  # Orbax saves only to absolute paths.
  export_dir = epath.Path(export_dir if "://" in str(export_dir) else os.path.abspath(export_dir))
  tmp = export_dir.parent / (export_dir.name + ".tmp")

  def fresh_tmp():
    if tmp.exists():
      tmp.rmtree()
    tmp.mkdir(parents=True)

  # In a pod one process clears the folder while the others wait (run_on_writer is
  # collective): a late rmtree elsewhere would delete shards already written into it.
  pod.run_on_writer(fresh_tmp)
  with ocp.StandardCheckpointer() as ckptr:  # every process saves; Orbax coordinates them
    ckptr.save(tmp / "params", jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params))
    ckptr.wait_until_finished()
  model_config = dataclasses.asdict(config)
  model_config["mlp_activations"] = list(config.mlp_activations)
  info = {**_EXPORT_FORMAT, "t5_config": model_config, "param_dtypes": ["float32"],
          "vocabulary_path": vocabulary_path, **dict(extra or {})}

  def finish():
    (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    # Swap in the complete export; a kill here leaves either the old or the .tmp one.
    if export_dir.exists():
      export_dir.rmtree()
    tmp.rename(export_dir)

  pod.run_on_writer(finish)


def read_export_info(path) -> dict:
  """The JSON of an export (path: the export dir or its MODEL_DIR), with the
  resolved directory under "path" and the T5Config under "config"."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  # Absolute: Orbax refuses relative paths (the example gins give relative ones).
  p = epath.Path(path if "://" in str(path) else os.path.abspath(path))
  if not _is_export_dir(p) and _is_export_dir(p / "export"):
    p = p / "export"
  if not _is_export_dir(p):
    raise FileNotFoundError(f"{path} holds no exported model (expected {EXPORT_INFO_FILE} "
                            "and params/ there or under export/).")
  info = json.loads((p / EXPORT_INFO_FILE).read_text())
  return dict(info, path=str(p), config=T5Config(**info["t5_config"]))


def load_exported(path) -> tuple[T5Config, Params]:
  """(T5Config, float32 params) from an export of this trainer (or its MODEL_DIR)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  info = read_export_info(path)
  # An explicit device: without one Orbax restores onto the saved sharding, which names
  # devices (a pod's) that a later run on another machine does not have.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        T5Model(info["config"]).abstract_params())
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(info["path"], "params"), target)
  return info["config"], params


def load_initial_params(path: str, model: T5Model) -> Params:
  """Params for fine-tuning: a trainer export (MODEL_DIR or MODEL_DIR/export), or
  a T5X / Hugging Face checkpoint read by spec_cascade.checkpoints.load_params.
  Raises ValueError naming the first parameter that does not fit the model."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  if "://" not in str(path) and not epath.Path(path).exists():
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH {path!r} does not exist. Give a T5X "
                            "checkpoint_<step> dir, an export dir, or None to train from scratch.")
  if _is_export_dir(path) or _is_export_dir(epath.Path(path) / "export"):
    _, params = load_exported(path)
  else:
    try:
      from spec_cascade import checkpoints  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          f"INITIAL_CHECKPOINT_PATH={path!r} is not an export of this trainer, and reading "
          f"T5X / Hugging Face checkpoints needs spec_cascade.checkpoints, which failed to "
          f"import ({e}). Install the full package or set INITIAL_CHECKPOINT_PATH=None.") from e
    try:
      loaded = checkpoints.load_params(path, model.config)
    except ValueError as e:  # e.g. the checkpoint's shapes disagree with the config
      raise ValueError(f"INITIAL_CHECKPOINT_PATH {path!r} does not fit the model "
                       f"({model.config}): {e}") from e
    params = loaded[0] if isinstance(loaded, tuple) else loaded  # (params, config)
  try:
    model.check_params(params)
  except ValueError as e:
    raise ValueError(f"INITIAL_CHECKPOINT_PATH {path!r} does not fit the model "
                     f"({model.config}): {e}") from e
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def check_teacher_path(path: str) -> None:
  """FileNotFoundError unless a local teacher path exists (checked before MODEL_DIR is made,
  so a mistyped path writes nothing)."""
  if "://" not in str(path) and not os.path.exists(path):
    raise FileNotFoundError(f"TEACHER_CHECKPOINT_PATH {path!r} does not exist; give the "
                            "verifier's export (its MODEL_DIR) or checkpoint folder.")


def load_teacher(path: str, student: T5Config) -> tuple[T5Model, Params]:
  """The distillation teacher: (T5Model, float32 params) from a trainer export or any
  checkpoint spec_cascade.checkpoints reads; refuses a teacher with another vocabulary."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  check_teacher_path(path)
  if _is_export_dir(path) or _is_export_dir(epath.Path(path) / "export"):
    config, params = load_exported(path)
  else:
    from spec_cascade import checkpoints  # pylint: disable=import-outside-toplevel
    params, config = checkpoints.load_params(path)
  if config.vocab_size != student.vocab_size:
    raise ValueError(f"TEACHER_CHECKPOINT_PATH {path!r} has vocab_size {config.vocab_size} "
                     f"but the student has {student.vocab_size}: distillation compares the "
                     "two distributions token by token, so both need one vocabulary.")
  return T5Model(config), jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
