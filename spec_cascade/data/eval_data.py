"""A task's evaluation examples and the batches an entry point decodes them in.

`load_task` reads a split — the offline corpora without TensorFlow, any other task through
seqio (each process of a pod reads only its share) — tokenizes it with the pair's vocabulary (a
decoder-only pair reads prompts: `data.prompts`), cuts over-long inputs (counted) and keeps
targets as text. `make_batches` sorts examples by input length into fixed-shape batches (padded
to one input length or to a multiple of `input_bucket`; the last batch filled with copies of
its last row), optionally several batches per call for continuous batching; `one_at_a_time`
gives the batch-1 latency inputs. Used by infer, sweep, calibrate and evaluate_pair.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from spec_cascade import decoding
from spec_cascade import pod
from spec_cascade.decoding import Bundle

log = logging.getLogger(__name__)


class _SeqioTokenizer:
  """seqio.Vocabulary behind the SentencePieceTokenizer interface."""
  eos_id = 1

  def __init__(self, vocabulary):
    self._v = vocabulary

  @property
  def vocab_size(self) -> int:
    return int(self._v.vocab_size)

  def encode(self, text: str) -> list[int]:
    return list(self._v.encode(text))

  def decode(self, ids) -> str:
    return self._v.decode([int(i) for i in ids])


@dataclasses.dataclass(frozen=True)
class Example:
  """One example: its position in the split (`index`, also its random-stream id), the source's
  id, the texts, and the token ids fed to the encoder (EOS last; cut to the input length)."""
  index: int
  id: str
  inputs: str
  targets: str
  input_ids: tuple[int, ...]


@dataclasses.dataclass
class TaskData:
  """The examples of one task split, as fed to the models.

  input_length: the encoder length every batch fits in; truncated: how many inputs were cut to
  it; longest_input: the longest input before cutting.
  """
  task: str
  split: str
  examples: list[Example]
  tokenizer: Any
  input_length: int
  truncated: int
  longest_input: int
  split_size: int


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _offline_rows(task: str, split: str) -> list[dict]:
  from spec_cascade.data import offline  # pylint: disable=g-import-not-at-top
  return offline.load_split(task, split)


def check_task(task: str) -> None:
  """Raises ValueError unless `task` is an offline task or a registered seqio Task.

  Offline tasks are checked without TensorFlow; anything else imports seqio and the project's
  task registrations (a few seconds)."""
  if not isinstance(task, str) or not task:
    raise ValueError(f"a task name must be a non-empty string, got {task!r}.")
  if task not in _offline_task_names():
    _seqio_task(task)


def _seqio_task(task: str):
  # Registers the prompt tasks and, through `tasks`, the T5 ones.
  from spec_cascade.data import prompt_tasks as _  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  try:
    t = seqio.get_mixture_or_task(task)
  except (ValueError, KeyError):
    raise ValueError(
        f"unknown task {task!r}: not an offline task ({', '.join(_offline_task_names())}) and "
        "not registered with seqio. Paper tasks: wmt_t2t_ende_v003, cnn_dailymail_v002, xsum; "
        "for decoder-only pairs the prompt tasks of spec_cascade.data.prompt_tasks "
        "(gsm8k_prompt, ...); register your own seqio.Task before running (see "
        "docs/experiments.md).") from None
  if not isinstance(t, seqio.Task):
    raise ValueError(f"{task!r} is a seqio mixture; infer and sweep take one task at a time "
                     f"(its tasks: {[x.name for x in t.tasks]}).")
  return t


def _seqio_rows(task: str, split: str, shard: tuple[int, int] = (0, 1)):
  """(rows with pre-tokenized input ids, tokenizer) of a registered seqio task; with
  shard = (index, count) > 1 process, seqio's `ShardInfo` share of them. A text task (the
  prompt tasks: string features, no vocabulary) gives rows without input ids and no
  tokenizer."""
  import seqio  # pylint: disable=g-import-not-at-top
  t = _seqio_task(task)
  info = seqio.ShardInfo(index=shard[0], num_shards=shard[1]) if shard[1] > 1 else None
  ds = t.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                     use_cached=False, shard_info=info)
  text_task = _is_text_task(t)
  rows = []
  for ex in ds.as_numpy_iterator():
    text = lambda k: ex[k].decode("utf-8") if isinstance(ex[k], bytes) else str(ex[k])
    if text_task:
      rows.append({"inputs": text("inputs"), "targets": text("targets")})
      continue
    rows.append({"inputs": text("inputs_pretokenized"), "targets": text("targets_pretokenized"),
                 "input_ids": [int(x) for x in ex["inputs"]]})
  if text_task:
    return rows, None
  return rows, _SeqioTokenizer(t.output_features["targets"].vocabulary)


def _is_text_task(t) -> bool:
  """Whether a seqio task's inputs are text to be tokenized by the model (prompt tasks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return t.output_features["inputs"].dtype == tf.string


def _read_split(task: str, split: str, vocabulary_path: str | None, codec=None):
  """(rows, tokenizer): every example of the split as {inputs, targets, id, input_ids (EOS
  last)}, in split order. In a multi-host run each process reads and tokenizes only its share
  (`pod.shard_of`) and the shares are exchanged, so every process returns the same rows (for
  seqio tasks whose files seqio shards whole, "split order" is seqio's per-host order
  interleaved: fixed for a given number of hosts).

  codec: a decoder-only pair's `prompts.PromptCodec`: input_ids are then its prompts (BOS
  first, no EOS) and it is the tokenizer returned."""
  index, count = pod.process_index(), pod.process_count()
  if task in _offline_task_names():
    rows = _offline_rows(task, split)
    if codec is not None:
      tokenizer, encode = codec, codec.encode_prompt
    else:
      tokenizer = offline_tokenizer(vocabulary_path)
      encode = lambda text: tokenizer.encode(text) + [tokenizer.eos_id]
    share = [dict(rows[i], id=str(rows[i].get("id", i)), input_ids=encode(rows[i]["inputs"]))
             for i in pod.shard_of(len(rows), index, count)]
  else:
    share, tokenizer = _seqio_rows(task, split, (index, count))
    if codec is not None:
      tokenizer = codec
      for r in share:
        r["input_ids"] = codec.encode_prompt(r["inputs"])
    elif tokenizer is None:
      raise ValueError(f"task {task!r} holds text prompts for decoder-only models "
                       "(spec_cascade.data.prompt_tasks); a T5 pair needs a task tokenized "
                       "with its vocabulary.")
    else:
      for r in share:
        if r["input_ids"][-1:] != [1]:
          r["input_ids"] = r["input_ids"] + [1]
  rows = pod.interleave_shares(pod.allgather_objects(share)) if count > 1 else share
  for i, r in enumerate(rows):
    r.setdefault("id", str(i))
  return rows, tokenizer


def _offline_task_names() -> tuple[str, ...]:
  from spec_cascade.data import offline  # pylint: disable=g-import-not-at-top
  return offline.TASKS


def offline_tokenizer(vocabulary_path: str | None = None):
  """SentencePieceTokenizer for the offline tasks (default: the corpora's vocabulary)."""
  from spec_cascade.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.SentencePieceTokenizer(vocabulary_path or vocab_lib.get_vocab_path())


def checkpoint_vocabulary(path: str | None) -> str | None:
  """The vocabulary a spec_cascade checkpoint records, if any; a decoder-only checkpoint's
  tokenizer file (`hf_decoder.tokenizer_path`)."""
  if not path:
    return None
  from spec_cascade import checkpoints  # pylint: disable=g-import-not-at-top
  path = checkpoints.resolve_checkpoint_dir(str(path))
  from spec_cascade import hf_decoder  # pylint: disable=g-import-not-at-top
  if hf_decoder.checkpoint_format(path) is not None:
    return hf_decoder.tokenizer_path(path)
  try:
    return checkpoints.read_checkpoint_info(str(path)).get("vocabulary_path")
  except (FileNotFoundError, ValueError, OSError):
    return None


def prompt_codec(task: str, pair: Sequence[Bundle | None], vocabulary_path: str | None):
  """The `prompts.PromptCodec` a pair reads `task` with when either model is decoder-only
  (its tokenizer from `vocabulary_path`, its EOS from the configs, the task's template's stop
  strings); None for T5 pairs, which read token ids in T5's vocabulary."""
  if not any(b is not None and decoding.contract.is_decoder_only(b.model) for b in pair):
    return None
  from spec_cascade.data import model_tokenizer  # pylint: disable=g-import-not-at-top
  from spec_cascade.data import prompts  # pylint: disable=g-import-not-at-top
  if not vocabulary_path:
    raise ValueError("a decoder-only pair reads prompts tokenized with its own vocabulary, and "
                     "none was found next to the checkpoint (tokenizer.model or "
                     "tokenizer.json); set vocabulary_path to the model's tokenizer file.")
  template = None
  if task not in _offline_task_names():
    from spec_cascade.data import prompt_tasks  # pylint: disable=g-import-not-at-top
    template = prompt_tasks.template_of(task)
  return prompts.PromptCodec(model_tokenizer.ModelTokenizer(vocabulary_path),
                             decoding.eos_id_of(*pair), template)


def load_task(task: str, split: str = "validation", num_examples: int | None = None,
              seed: int = 0, vocabulary_path: str | None = None,
              input_length: int | None = None, length_multiple: int = 32,
              pair: Sequence[Bundle | None] = ()) -> TaskData:
  """Selects and tokenizes a task's examples.

  task: an offline task (read without TensorFlow) or a registered seqio task.
  num_examples: a random subset of that size (fixed by `seed`, kept in split order); None = all.
  vocabulary_path: SentencePiece model for offline tasks (default: the offline corpora's);
    seqio tasks use their own vocabulary. For a decoder-only pair: the model's tokenizer file.
  input_length: cut longer inputs (counted in `truncated`); None = longest input rounded up to
    `length_multiple`.
  pair: the (drafter, verifier) the data is for. When either is decoder-only, inputs are
    prompts (`prompt_codec`): BOS, the input text's ids, no EOS; a cut prompt keeps BOS and
    its last ids. TaskData.tokenizer then decodes continuations into predictions.
  Multi-host: each process reads its share; all return the same TaskData (`_read_split`).
  """
  codec = prompt_codec(task, pair, vocabulary_path)
  rows, tokenizer = _read_split(task, split, vocabulary_path, codec)
  ids = [r["input_ids"] for r in rows]
  if not rows:
    raise ValueError(f"{task}/{split} has no examples.")
  picked = np.arange(len(rows))
  if num_examples is not None:
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
      raise ValueError(f"num_examples must be a positive int or None, got {num_examples!r}.")
    if num_examples < len(rows):
      picked = np.sort(np.random.default_rng(seed).choice(len(rows), num_examples, replace=False))
  longest = max(len(ids[i]) for i in picked)
  if input_length is None:
    input_length = _round_up(longest, length_multiple)
  elif not isinstance(input_length, (int, np.integer)) or input_length < 2:
    raise ValueError(f"input_length must be an int >= 2 or None, got {input_length!r}.")
  examples, truncated = [], 0
  for i in picked:
    x = ids[i]
    if len(x) > input_length:
      truncated += 1
      x = (codec.cut_prompt(x, input_length) if codec is not None
           else x[:input_length - 1] + [tokenizer.eos_id])
    r = rows[i]
    examples.append(Example(int(i), r["id"], r["inputs"], r["targets"], tuple(x)))
  if truncated:
    log.warning("%s/%s: %d of %d inputs are longer than input_length=%d and were cut "
                "(longest: %d tokens).", task, split, truncated, len(examples), input_length,
                longest)
  return TaskData(task, split, examples, tokenizer, int(input_length), truncated, longest,
                  len(rows))


@dataclasses.dataclass(frozen=True)
class Batch:
  """positions: int [n_real] indices into TaskData.examples; inputs: int32 [R, S] (R = the
  batch size, or a multiple of it for a stream decoded that many rows at a time);
  example_ids: int32 [R] (each row's random stream); rows past n_real are copies."""
  positions: np.ndarray
  inputs: np.ndarray
  example_ids: np.ndarray

  @property
  def num_real(self) -> int:
    return len(self.positions)


def check_stream_batches(stream_batches) -> None:
  if not isinstance(stream_batches, (int, np.integer)) or stream_batches < 1:
    raise ValueError(f"stream_batches must be a positive int (1: plain batches), got "
                     f"{stream_batches!r}.")


def one_at_a_time(data: TaskData, n: int | None = None) -> list[tuple[np.ndarray, int]]:
  """The first n examples (None: all) as ([1, input_length] int32 inputs, example id) pairs,
  for decoding each alone (the batch-1 latency regime)."""
  out = []
  for i, ex in enumerate(data.examples[:n]):
    x = np.zeros((1, data.input_length), np.int32)
    ids = ex.input_ids[:data.input_length]
    x[0, :len(ids)] = ids
    out.append((x, i))
  return out


def make_batches(data: TaskData, batch_size: int, input_bucket: int | None = None,
                 stream_batches: int = 1) -> list[Batch]:
  """Length-sorted batches of exactly `batch_size` rows (see the module docstring).

  stream_batches > 1: each Batch holds that many consecutive batches (the last one fewer), to
  be decoded `batch_size` rows at a time with continuous batching (`engine_config` passes
  slots = batch_size)."""
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  check_stream_batches(stream_batches)
  if input_bucket is not None and (not isinstance(input_bucket, (int, np.integer))
                                   or input_bucket < 1):
    raise ValueError(f"input_bucket must be a positive int or None, got {input_bucket!r}.")
  order = sorted(range(len(data.examples)), key=lambda p: (len(data.examples[p].input_ids), p))
  batches = []
  step = batch_size * stream_batches
  for start in range(0, len(order), step):
    pos = np.asarray(order[start:start + step])
    longest = max(len(data.examples[p].input_ids) for p in pos)
    width = (data.input_length if input_bucket is None
             else min(data.input_length, _round_up(longest, input_bucket)))
    num_rows = _round_up(len(pos), batch_size)
    rows = list(pos) + [pos[-1]] * (num_rows - len(pos))
    inputs = np.zeros((num_rows, width), np.int32)
    for r, p in enumerate(rows):
      x = data.examples[p].input_ids
      inputs[r, :len(x)] = x
    ids = np.asarray([data.examples[p].index for p in rows], np.int32)
    batches.append(Batch(pos, inputs, ids))
  return batches
