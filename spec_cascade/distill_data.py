"""Sequence-level distillation data: the teacher's own outputs on the training inputs.

Sequence-level KD (Kim & Rush, 2016; one of DistillSpec's data choices) trains the student on
what the teacher generates rather than on the references. The teacher decodes every training
input once, with the decoding engine (`decoding.generate`, method 'verifier'), and the outputs
are cached on disk so that training (and any resumed run) reads them back:

    DIR/manifest.json      what the targets are: teacher, mode, temperature, seed, lengths,
                           a fingerprint of the inputs; checked on every reuse
    DIR/shard_00000.npz    tokens [n, max_length] int32 of examples 0 .. n−1 (0 after EOS)
    ...

Shards are written atomically one by one, so an interrupted generation resumes at the first
missing shard. Example i's randomness depends on (seed, i) only, so the sampled targets do not
depend on the shard size or on where a run was interrupted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Sequence

import numpy as np

from spec_cascade import train_data

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "spec_cascade.teacher_targets"


def inputs_fingerprint(inputs: Sequence[np.ndarray]) -> str:
  """sha256 over the token ids and lengths of every input, in order."""
  h = hashlib.sha256()
  for x in inputs:
    a = np.asarray(x, np.int32)
    h.update(np.int64(a.size).tobytes())
    h.update(a.tobytes())
  return h.hexdigest()


def _shard_path(out_dir: str, i: int) -> str:
  return os.path.join(out_dir, f"shard_{i:05d}.npz")


def _check_manifest(out_dir: str, want: dict) -> None:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(want, f, indent=2)
    os.replace(tmp, path)
    return
  try:
    with open(path) as f:
      have = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete {out_dir} to regenerate the "
                     "teacher targets.") from e
  diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
  if diff:
    raise ValueError(
        f"The teacher targets in {out_dir} were made with other settings (cached, now): "
        f"{diff}. Delete that folder to regenerate them, or point the run at another one.")


def teacher_targets(teacher, inputs: Sequence[np.ndarray], out_dir: str, *,
                    max_length: int, temperature: float = 0.0, seed: int = 0,
                    teacher_name: str = "", shard_size: int = 512, batch_size: int = 64,
                    input_boundaries: Sequence[int] | None = None) -> list[np.ndarray]:
  """The teacher's outputs for `inputs`, generated (or read back) from `out_dir`.

  teacher: decoding.Bundle(T5Model, params). inputs: int32 token arrays (EOS-terminated, as
  train_data.tokenize_examples makes them). temperature 0 = greedy, > 0 = sampled at T.
  Returns one int32 array per input: the output up to and including EOS (outputs that reach
  max_length without EOS are kept as they are, and counted in the log).
  """
  # pylint: disable=import-outside-toplevel
  from spec_cascade import decoding
  if shard_size < 1 or batch_size < 1 or max_length < 1:
    raise ValueError("shard_size, batch_size and max_length must be ≥ 1.")
  longest = max((len(x) for x in inputs), default=1)
  bounds = tuple(input_boundaries or train_data.default_boundaries(max(longest, 16)))
  manifest = {"format": FORMAT, "version": 1, "teacher": teacher_name,
              "teacher_config": repr(teacher.model.config), "num_examples": len(inputs),
              "inputs_sha256": inputs_fingerprint(inputs), "max_length": int(max_length),
              "temperature": float(temperature), "seed": int(seed),
              "shard_size": int(shard_size)}
  _check_manifest(out_dir, manifest)
  num_shards = -(-len(inputs) // shard_size)
  done = sum(os.path.exists(_shard_path(out_dir, i)) for i in range(num_shards))
  if done < num_shards:
    log.info("Teacher targets: %d of %d shards cached in %s; generating the rest.", done,
             num_shards, out_dir)
  t0, made = time.time(), 0
  for i in range(num_shards):
    path = _shard_path(out_dir, i)
    if os.path.exists(path):
      continue
    lo, hi = i * shard_size, min(len(inputs), (i + 1) * shard_size)
    # Length-sorted batches waste little on padding; bucketed widths bound compilations.
    order = sorted(range(lo, hi), key=lambda j: len(inputs[j]))
    tokens = np.zeros((hi - lo, max_length), np.int32)
    for b in range(0, len(order), batch_size):
      rows = order[b:b + batch_size]
      width = train_data._bucket(max(len(inputs[j]) for j in rows), bounds)  # pylint: disable=protected-access
      x = np.zeros((batch_size, width), np.int32)
      for r, j in enumerate(rows):
        x[r, :len(inputs[j])] = inputs[j]
      ids = np.full((batch_size,), len(inputs), np.int64)  # padding rows: unused ids
      ids[:len(rows)] = rows
      out = decoding.generate(None, teacher, x, method="verifier", temperature=temperature,
                              seed=seed, example_ids=ids, max_decode_length=max_length)
      for r, j in enumerate(rows):
        tokens[j - lo] = out.tokens[r]
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, tokens=tokens)
    os.replace(tmp, path)
    made += 1
    elapsed, left = time.time() - t0, num_shards - done - made
    log.info("Teacher targets: shard %d/%d written (%.0f s; ETA %.0f s).", i + 1, num_shards,
             elapsed, elapsed / made * left)
  targets, cut = [], 0
  for i in range(num_shards):
    with np.load(_shard_path(out_dir, i)) as f:
      shard = f["tokens"]
    for row in shard:
      eos = np.flatnonzero(row == train_data.EOS_ID)
      if eos.size:
        targets.append(row[:eos[0] + 1].copy())
      else:
        cut += 1
        nonzero = np.flatnonzero(row)
        targets.append(row[:nonzero[-1] + 1].copy() if nonzero.size else row[:1].copy())
  if cut:
    log.info("Teacher targets: %d of %d outputs reached max_length=%d without EOS (kept as "
             "they are).", cut, len(targets), max_length)
  return targets[:len(inputs)]
