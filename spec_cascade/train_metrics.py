"""What a training run measures and where it records it: metrics.jsonl and TensorBoard
summaries in MODEL_DIR (`MetricsLog`), and the greedy-decode validation metrics (exact match,
BLEU / ROUGE) of held-out examples.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade import train_data, train_steps
from spec_cascade.models import T5Model

log = logging.getLogger(__name__)

Params = Any


class MetricsLog:
  """Appends JSON lines to MODEL_DIR/metrics.jsonl and, with `summaries`, writes the same
  scalars as TensorBoard summaries to MODEL_DIR/train and MODEL_DIR/eval (T5X's folders are
  train/ and training_eval/; `tensorboard --logdir MODEL_DIR` shows both). Process 0 only."""

  def __init__(self, model_dir, summaries: bool = True):
    self.model_dir = str(model_dir)
    self.path = os.path.join(self.model_dir, "metrics.jsonl")
    self.summaries = summaries
    self._writers: dict[str, Any] = {}

  def write(self, record: Mapping[str, Any]) -> None:
    if jax.process_index() != 0:
      return
    from etils import epath  # pylint: disable=import-outside-toplevel
    clean = {k: (float(v) if isinstance(v, (np.floating, np.integer, jax.Array)) else v)
             for k, v in record.items()}
    with epath.Path(self.path).open("a") as f:
      f.write(json.dumps(clean) + "\n")
    if self.summaries:
      scalars = {k: v for k, v in clean.items() if k not in ("step", "kind")
                 and isinstance(v, (int, float)) and math.isfinite(v)}
      writer = self._writer(str(clean.get("kind", "train")))
      writer.write_scalars(int(clean["step"]), scalars)
      writer.flush()  # events are few; a run killed later keeps every one written

  def _writer(self, kind: str):
    if kind not in self._writers:
      # clu imports TensorFlow's summary ops: only a run that writes summaries pays for it.
      from clu import metric_writers  # pylint: disable=import-outside-toplevel
      self._writers[kind] = metric_writers.SummaryWriter(os.path.join(self.model_dir, kind))
    return self._writers[kind]

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()


def format_eta(seconds: float) -> str:
  """seconds → 'H:MM:SS' (negative: 0:00:00)."""
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_summary(sums: Sequence[Mapping[str, Any]], learning_rate: float, batch_size: int,
                  sec_per_step: float, distilled: bool) -> dict:
  """The logged training metrics of one log period: `sums` holds each step's metrics (host
  values of train_steps.make_train_step's); per-token terms are averaged over the period's
  real target tokens."""
  w = max(sum(float(m["weight"]) for m in sums), 1.0)
  out = {
      "loss": float(np.mean([m["loss"] for m in sums])),
      "cross_entropy": sum(float(m["cross_entropy"]) for m in sums) / w,
      "z_loss": sum(float(m["z_loss"]) for m in sums) / w,
      "accuracy": sum(float(m["correct"]) for m in sums) / w,
      "grad_norm": float(sums[-1]["grad_norm"]),
      "learning_rate": learning_rate,
      "examples_per_s": batch_size / sec_per_step,
      "target_tokens_per_s": w / len(sums) / sec_per_step,
  }
  if distilled:
    # acceptance: 1 − TV(teacher, student) per token, SpecDecode's expected acceptance
    # rate at the teacher temperature; agreement: the greedy one.
    out.update(kd=sum(float(m["kd"]) for m in sums) / w,
               acceptance=1.0 - sum(float(m["tvd"]) for m in sums) / w,
               agreement=sum(float(m["agree"]) for m in sums) / w)
  return out


def eval_summary(totals: Mapping[str, Any]) -> dict:
  """Validation metrics from the eval step's loss_sums, summed over the eval batches."""
  w = max(float(totals["weight"]), 1.0)
  out = {"eval_loss": float(totals["cross_entropy"]) / w,
         "eval_accuracy": float(totals["correct"]) / w}
  if "kd" in totals:  # how well the student would draft for the teacher
    out.update(eval_kd=float(totals["kd"]) / w,
               eval_acceptance=1.0 - float(totals["tvd"]) / w,
               eval_agreement=float(totals["agree"]) / w)
  return out


def task_metrics(task: str, targets: list[str], predictions: list[str]) -> dict:
  """Exact match, plus the task's BLEU / ROUGE where spec_cascade.metrics has them."""
  scores = {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)]))}
  try:
    from spec_cascade import metrics  # pylint: disable=import-outside-toplevel
    fn = metrics.metric_for_task(task)
    fn = getattr(metrics, fn) if isinstance(fn, str) else fn
    scores.update({k: float(v) for k, v in dict(fn(targets, predictions)).items()})
  except (ImportError, ValueError, KeyError, AttributeError) as e:
    log.info("No BLEU/ROUGE for %s (%s); exact match only.", task, e)
  return scores


def decode_eval(model: T5Model, params: Params, decode_examples: Mapping[str, list], tokenizer,
                feature_lengths: Mapping[str, int] | None) -> dict:
  """Greedy-decodes the held-out examples of each task; {"<task>/<metric>": value} with
  exact match + BLEU/ROUGE."""
  lengths = train_data.check_feature_lengths(
      feature_lengths or {"inputs": 512, "targets": 128})
  decode = train_steps.jitted_greedy(model.config)
  out = {}
  for task, examples in decode_examples.items():
    if not examples:
      continue
    inputs, _, _ = train_data.tokenize_examples(examples, tokenizer, lengths,
                                                name=f"{task}/decode")
    batch = train_data.make_batch(inputs, inputs, len(inputs), lengths["inputs"],
                                  lengths["inputs"])["encoder_input_tokens"]
    tokens = np.asarray(decode(params, jnp.asarray(batch), lengths["targets"]))
    preds = []
    for row in tokens:
      ids = row.tolist()
      ids = ids[:ids.index(train_data.EOS_ID)] if train_data.EOS_ID in ids else ids
      # The model's vocab is padded past the tokenizer's (4224 vs 4100): an
      # untrained model may emit ids the tokenizer cannot decode.
      preds.append(tokenizer.decode([i for i in ids if 1 < i < tokenizer.vocab_size]))
    scores = task_metrics(task, [ex["targets"] for ex in examples], preds)
    out.update({f"{task}/{k}": v for k, v in scores.items()})
  return out
