"""The data of one training run: its training and validation batch sources, the held-out
examples it greedy-decodes, and the teacher-generated targets of sequence-level distillation.

Offline tasks (numpy, length bucketed) give every process the same global batches; seqio tasks
give each process its own shard (`RunData.process_local`). The batches themselves are
spec_cascade.train_data's.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax

from spec_cascade import distill, train_data

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunData:
  """What a run reads: `train` and `eval` sources, and for the greedy-decode validation the
  tokenizer and examples per task; process_local: each process holds only its own rows."""
  train: train_data.BatchSource
  eval: train_data.BatchSource | None
  tokenizer: Any = None
  decode_examples: Mapping[str, list] | None = None
  process_local: bool = False
  vocab_path: str | None = None


def build_data(name: str, feature_lengths, batch_size: int, seed: int, *, vocab_path,
               cache_dir, bucket: bool, shuffle_window_batches: int, infer_eval_examples: int,
               eval_steps: int) -> RunData:
  """The sources of MIXTURE_OR_TASK_NAME `name`: an offline task / mixture (validation examples
  enough for eval_steps batches and infer_eval_examples per task) or a registered seqio task."""
  tasks = train_data.offline_task_names(name)
  if tasks is not None:
    tokenizer = train_data.load_offline_tokenizer(vocab_path, cache_dir)
    train_ex = train_data.load_offline_examples(name, "train", cache_dir, balance=True,
                                                seed=seed)
    source = train_data.offline_source(train_ex, tokenizer, feature_lengths, batch_size,
                                       seed=seed, name=f"{name}/train", bucket=bucket,
                                       window_batches=shuffle_window_batches)
    eval_source, decode = None, None
    if eval_steps or infer_eval_examples:
      # Enough validation examples for eval_steps batches, spread over the tasks.
      per_task = max(infer_eval_examples,
                     -(-eval_steps * batch_size // len(tasks)) if eval_steps else 0)
      val = train_data.load_offline_examples(name, "validation", cache_dir, per_task)
      if eval_steps:
        eval_source = train_data.offline_source(val, tokenizer, feature_lengths, batch_size,
                                                shuffle=False, name=f"{name}/validation")
      if infer_eval_examples:
        decode = {t: [ex for ex in val if ex["task"] == t][:infer_eval_examples]
                  for t in tasks}
    path = getattr(tokenizer, "path", None) or vocab_path
    return RunData(source, eval_source, tokenizer, decode, vocab_path=path and str(path))
  nproc, pidx = jax.process_count(), jax.process_index()
  source = train_data.SeqioBatches(name, "train", feature_lengths, batch_size, seed=seed,
                                   shard_index=pidx, num_shards=nproc)
  eval_source = (train_data.SeqioBatches(name, "validation", feature_lengths, batch_size,
                                         shuffle=False, shard_index=pidx, num_shards=nproc)
                 if eval_steps else None)
  if infer_eval_examples:
    log.warning("infer_eval_examples is only supported on the offline tasks; use "
                "spec_cascade.infer for %s.", name)
  return RunData(source, eval_source, process_local=True)


def with_teacher_targets(source, teacher, kd: distill.Distillation, model_dir: str,
                         seed: int) -> train_data.OfflineBatches:
  """The training source with its targets replaced by the teacher's outputs (sequence-level
  KD), generated once into MODEL_DIR/teacher_targets (resumable, see distill_data)."""
  from spec_cascade import decoding, distill_data  # pylint: disable=import-outside-toplevel
  if not isinstance(source, train_data.OfflineBatches):
    raise ValueError(
        f"SEQUENCE_TARGETS={kd.sequence_targets!r} needs the offline tasks' token arrays "
        "(debian_ende, debian_summarize, debian_mix); for seqio tasks use token-level KD "
        "(SEQUENCE_TARGETS='none') and ON_POLICY_FRACTION, which need no pre-generated data.")
  temperature = 0.0 if kd.sequence_targets == "greedy" else kd.teacher_temperature
  targets = distill_data.teacher_targets(
      decoding.Bundle(*teacher), source.inputs, os.path.join(str(model_dir), "teacher_targets"),
      max_length=source.target_length, temperature=temperature, seed=seed,
      teacher_name=str(kd.teacher_checkpoint_path), batch_size=source.batch_size)
  return train_data.OfflineBatches(
      source.inputs, targets, source.batch_size,
      {"inputs": source.input_length, "targets": source.target_length}, seed=source.seed,
      shuffle=source.shuffle, window_batches=source.window_batches,
      input_boundaries=source.input_boundaries, target_boundaries=source.target_boundaries)
