"""Devices: a ('data', 'model') mesh, T5X-style logical-axis rules, shardings, multi-host.

The batch is split over 'data'; parameters are replicated over 'data' and, for models too big
for one chip, split over 'model' following T5X's standard rules (vocab, mlp, heads and
joined_kv → model; embed replicated). jit with NamedSharding is the current form of pmap.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# T5X's standard logical → mesh axis rules.
LOGICAL_AXIS_RULES = (("batch", "data"), ("vocab", "model"), ("mlp", "model"),
                      ("heads", "model"), ("joined_kv", "model"), ("embed", None),
                      ("relpos_buckets", None))

# Logical axes of each T5 and decoder-only parameter, by the last components of its path.
_PARAM_AXES = (
    (r"token_embedder/embedding$", ("vocab", "embed")),
    (r"(query|key|value)/kernel$", ("embed", "joined_kv")),
    (r"(query|key|value)/bias$", ("joined_kv",)),  # Qwen2: split with its kernel's columns
    (r"out/kernel$", ("joined_kv", "embed")),
    (r"mlp/wi(_\d+)?/kernel$", ("embed", "mlp")),
    (r"mlp/wo/kernel$", ("mlp", "embed")),
    (r"logits_dense/kernel$", ("embed", "vocab")),
    (r"relpos_bias/rel_embedding$", ("heads", "relpos_buckets")),
    (r"scale$", ("embed",)),
)


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh over all devices (data defaults to devices // model)."""
  devices = list(jax.devices() if devices is None else devices)
  if model < 1 or len(devices) % model:
    raise ValueError(f"model={model} must divide the {len(devices)} devices.")
  data = len(devices) // model if data is None else data
  if data * model != len(devices):
    raise ValueError(f"mesh data×model = {data}×{model} != {len(devices)} devices.")
  return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def logical_axes(path: str) -> tuple[str | None, ...] | None:
  for pattern, axes in _PARAM_AXES:
    if re.search(pattern, path):
      return axes
  return None


def param_spec(mesh: Mesh, path: str, shape: tuple[int, ...]) -> P:
  """PartitionSpec for one parameter; dims not divisible by the axis size stay replicated."""
  axes = logical_axes(path)
  if axes is None or len(axes) != len(shape):
    return P()
  rules = dict(LOGICAL_AXIS_RULES)
  out = []
  for dim, name in zip(shape, axes):
    mesh_axis = rules.get(name)
    if mesh_axis is not None and dim % mesh.shape[mesh_axis] == 0:
      out.append(mesh_axis)
    else:
      out.append(None)
  return P(*out)


def param_shardings(mesh: Mesh, params: Any) -> Any:
  """NamedSharding per leaf of a parameter tree (works on arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return NamedSharding(mesh, param_spec(mesh, name, tuple(leaf.shape)))
  return jax.tree_util.tree_map_with_path(one, params)


def put(tree: Any, shardings: Any) -> Any:
  """jax.device_put(tree, shardings) that also works when the shardings span several
  processes: there each leaf not already placed so is taken from host memory (every process
  holds the whole tree, each uploads its own shards), because XLA's CPU and GPU clients cannot
  copy device to device across hosts. shardings: one Sharding or a tree like `tree`'s."""
  if jax.process_count() > 1:
    if isinstance(shardings, jax.sharding.Sharding):
      shardings = jax.tree_util.tree_map(lambda _: shardings, tree)
    tree = jax.tree_util.tree_map(
        lambda x, s: x if getattr(x, "sharding", None) == s else np.asarray(x), tree,
        shardings)
  return jax.device_put(tree, shardings)


def shard_params(mesh: Mesh, params: Any) -> Any:
  """Places params on the mesh by the T5X rules (`put`: also on a mesh spanning processes)."""
  return put(params, param_shardings(mesh, params))


def shard_batch(mesh: Mesh, x) -> jax.Array:
  """Splits axis 0 over 'data'."""
  spec = P("data", *([None] * (np.ndim(x) - 1)))
  return jax.device_put(x, NamedSharding(mesh, spec))


def pad_batch(mesh: Mesh, inputs: np.ndarray, ids: np.ndarray):
  """Pads the batch to a multiple of the 'data' axis with empty rows (ids −1)."""
  size = mesh.shape["data"]
  pad = (-inputs.shape[0]) % size
  if pad:
    inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
    ids = np.concatenate([ids, -np.ones((pad,), ids.dtype)])
  return inputs, ids, pad


def check_stream_mesh(mesh: Mesh, slots: int) -> None:
  """ValueError unless continuous batching with `slots` rows can run on `mesh`."""
  if mesh.shape["model"] != 1:
    raise ValueError(f"continuous batching (slots) splits examples over 'data' only; this mesh "
                     f"has model={mesh.shape['model']}. Use a data-parallel mesh (model=1) or "
                     "slots=None.")
  if slots % mesh.shape["data"]:
    raise ValueError(f"slots={slots} must be a multiple of the mesh's data size "
                     f"{mesh.shape['data']} (each device decodes slots / data rows).")


def interleave_batch(mesh: Mesh, inputs: np.ndarray, ids: np.ndarray):
  """Pads like `pad_batch`, then orders rows so that device d's contiguous share of axis 0
  holds rows d, d + D, d + 2D, ... (D = the 'data' size). Returns (inputs, ids, order) with
  new row i = old row order[i]; `np.argsort(order)` puts results back."""
  inputs, ids, _ = pad_batch(mesh, inputs, ids)
  size = mesh.shape["data"]
  order = np.arange(inputs.shape[0]).reshape(-1, size).T.ravel()
  return inputs[order], ids[order], order


# A run's devices (infer, sweep, calibrate).

def device_summary() -> str:
  """'<count> x <device kind>' of this process's devices: timings made on other hardware are
  not comparable, so a sweep's settings record it."""
  devices = jax.devices()
  return f"{len(devices)} x {devices[0].device_kind}"


def run_mesh(model_parallel: int = 1, use_mesh: bool | None = None):
  """A ('data', 'model') mesh when there are several devices (or use_mesh=True), else None."""
  if use_mesh is None:
    use_mesh = jax.device_count() > 1
  return make_mesh(model=model_parallel) if use_mesh else None


def on_mesh(bundle, mesh):
  """bundle with its parameters placed on `mesh` once (T5X rules, `parallel.shard_params`), so
  that the decode calls over a run's batches do not each move them; None / no mesh: as is."""
  if bundle is None or mesh is None:
    return bundle
  return bundle._replace(params=shard_params(mesh, bundle.params))
