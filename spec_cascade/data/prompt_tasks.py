"""seqio tasks with few-shot prompts for decoder-only models: the ICLR Gemma experiments.

The ICLR version of the paper runs Gemma 2B → 27B on GSM8K, WMT, MBPP, SQuAD, WebQuestions,
NaturalQA and TriviaQA (docs/method.md §6). It names the datasets only; sources, splits,
prompts and metrics below are our choices:

* gsm8k_prompt: TFDS gsm8k:1.0.0 (test); 4-shot chain of thought; accuracy.
* wmt_ende_prompt: TFDS wmt_t2t_translate/de-en:1.0.0 (validation = newstest2013); 2-shot;
  BLEU.
* mbpp_prompt: MBPP's mbpp.jsonl (gin `mbpp_jsonl_path.path`; test); 2-shot, code in a fenced
  block; BLEU (*).
* squad_prompt: TFDS squad/v1.1:3.0.0 (validation); 1-shot with the passage; EM and F1.
* web_questions_prompt: TFDS web_questions:1.0.0 (test); 4-shot closed book; EM.
* natural_questions_prompt: TFDS natural_questions_open:1.0.0 (validation); 4-shot closed book;
  EM.
* trivia_qa_prompt: TFDS trivia_qa/unfiltered.nocontext:1.1.0 (validation); 4-shot closed
  book; EM.

accuracy: the prediction's final number equals the answer's; EM: exact match against any
accepted answer. (*) MBPP's BLEU to the reference solution stands in for pass@1, which would
run the generated code.

MBPP's splits are its task-id ranges (1-10 prompt, 11-510 test, 511-600 validation, 601-974
train). Several accepted answers are joined by `metrics.ANSWER_SEPARATOR` in the target.

The features are text (no vocabulary): `inputs` is the whole prompt, `targets` the reference.
A decoder-only model's own tokenizer tokenizes the prompt when `infer.load_task` reads it
(BOS first, no EOS), so one task serves Gemma, Llama and Qwen2 alike. A T5 pair cannot run
these tasks (it needs ids in its vocabulary; `infer` says so).

Importing this module registers the tasks (and the T5 tasks of `tasks`). Missing data raises an
error that says how to prepare it (`tasks.CheckedTfdsDataSource`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from spec_cascade import metrics
from spec_cascade.data import prompts
from spec_cascade.data import tasks

TEXT = seqio.Feature(seqio.PassThroughVocabulary(size=0), dtype=tf.string, rank=0,
                     add_eos=False)
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
               "train": (601, 974)}
_MBPP_HOW = ("MBPP is not in TFDS: download mbpp.jsonl from the google-research/google-research "
             "repository (folder mbpp/) and bind mbpp_jsonl_path.path to it (gin: "
             "--gin.mbpp_jsonl_path.path=\"'/data/mbpp.jsonl'\").")


@gin.configurable
def mbpp_jsonl_path(path: str | None = None) -> str | None:
  """Where MBPP's mbpp.jsonl is (gin-configurable; resolved when the data is read)."""
  return path


def _answers(values: tf.Tensor) -> tf.Tensor:
  """A list of accepted answers as one target string (`metrics.ANSWER_SEPARATOR`)."""
  return tf.strings.reduce_join(values, separator=metrics.ANSWER_SEPARATOR)


def _question(x, targets) -> dict[str, tf.Tensor]:
  return {"question": x["question"], "targets": targets}


@dataclasses.dataclass(frozen=True)
class PromptTaskSpec:
  """One prompt task: its template (a `prompts.TEMPLATES` name), where its data comes from
  (a TFDS name:version, or None for MBPP's file), its splits, and `fields`: a source row →
  {template field: scalar string, 'targets': the reference}, in TensorFlow ops."""
  template: str
  tfds_name: str | None
  splits: tuple[str, ...]
  fields: Callable[[Mapping[str, tf.Tensor]], dict[str, tf.Tensor]]


PROMPT_TASKS: dict[str, PromptTaskSpec] = {
    "gsm8k_prompt": PromptTaskSpec(
        "gsm8k", "gsm8k:1.0.0", ("train", "test"),
        lambda x: _question(x, tf.strings.strip(x["short_answer"]))),
    "wmt_ende_prompt": PromptTaskSpec(
        "wmt_ende", "wmt_t2t_translate/de-en:1.0.0", ("train", "validation", "test"),
        lambda x: {"en": x["en"], "targets": x["de"]}),
    "mbpp_prompt": PromptTaskSpec(
        "mbpp", None, tuple(MBPP_SPLITS),
        lambda x: {"text": x["text"], "tests": x["tests"], "targets": x["code"]}),
    "squad_prompt": PromptTaskSpec(
        "squad", "squad/v1.1:3.0.0", ("train", "validation"),
        lambda x: {"title": x["title"], "context": x["context"], "question": x["question"],
                   "targets": _answers(x["answers"]["text"])}),
    "web_questions_prompt": PromptTaskSpec(
        "closed_book_qa", "web_questions:1.0.0", ("train", "test"),
        lambda x: _question(x, _answers(x["answers"]))),
    "natural_questions_prompt": PromptTaskSpec(
        "closed_book_qa", "natural_questions_open:1.0.0", ("train", "validation"),
        lambda x: _question(x, _answers(x["answer"]))),
    "trivia_qa_prompt": PromptTaskSpec(
        "closed_book_qa", "trivia_qa/unfiltered.nocontext:1.1.0",
        ("train", "validation", "test"),
        lambda x: _question(x, _answers(x["answer"]["aliases"]))),
}

# Every registered prompt task's template (fixture tasks included), for `template_of`.
_TEMPLATE_OF: dict[str, prompts.PromptTemplate] = {}


def template_of(task: str) -> prompts.PromptTemplate | None:
  """The template a registered prompt task formats its inputs with; None for other tasks."""
  return _TEMPLATE_OF.get(task)


def format_prompts(template: prompts.PromptTemplate,
                   fields: Callable[[Mapping[str, tf.Tensor]], dict[str, tf.Tensor]]):
  """A seqio preprocessor: source row → {'inputs': the prompt, 'targets': the reference}, the
  prompt being `template.format(**fields(row))` built from the template's segments."""
  pieces = template.segments()

  @seqio.map_over_dataset
  def fn(x):
    values = fields(x)
    parts = []
    for literal, name in pieces:
      parts.append(literal)
      if name is not None:
        parts.append(values[name])
    return {"inputs": tf.strings.join(parts), "targets": values["targets"]}
  return fn


def _mbpp_rows(path: str | None) -> list[dict[str, Any]]:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"MBPP's mbpp.jsonl not found (mbpp_jsonl_path.path = {path!r}). "
                            + _MBPP_HOW)
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def mbpp_source(path_fn: Callable[[], str | None] = mbpp_jsonl_path) -> seqio.DataSource:
  """MBPP's rows of a split (by task id, `MBPP_SPLITS`) with their tests joined by newlines;
  the file is read when a split is asked for, so registering needs no data."""
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one small file; seqio shuffles examples itself.
    lo, hi = MBPP_SPLITS[split]
    rows = [r for r in _mbpp_rows(path_fn()) if lo <= int(r["task_id"]) <= hi]
    return tf.data.Dataset.from_tensor_slices({
        "task_id": tf.constant([int(r["task_id"]) for r in rows], tf.int64),
        "text": tf.constant([r["text"] for r in rows], tf.string),
        "code": tf.constant([r["code"] for r in rows], tf.string),
        "tests": tf.constant(["\n".join(r["test_list"]) for r in rows], tf.string)})
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(MBPP_SPLITS))


def rows_source(rows_of_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> seqio.DataSource:
  """A source serving given rows (nested dicts of strings, numbers and lists, shaped like a
  TFDS dataset's examples), e.g. `fixtures.prompt_rows`; for tests without the real data."""
  def columns(rows):
    first = rows[0]
    out = {}
    for key, value in first.items():
      if isinstance(value, Mapping):
        out[key] = columns([r[key] for r in rows])
      elif isinstance(value, (list, tuple)):
        items = [list(r[key]) for r in rows]
        sample = next((v for item in items for v in item), "")
        out[key] = tf.ragged.constant(items, dtype=tf.string if isinstance(sample, str) else None)
      else:
        out[key] = tf.constant([r[key] for r in rows])
    return out

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(columns(list(rows_of_split[split])))
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(rows_of_split))


def add_prompt_task(name: str, spec: PromptTaskSpec,
                    source: seqio.DataSource | None = None) -> seqio.Task:
  """Registers (again) the prompt task `name` of `spec`; `source` replaces its data (tests)."""
  if source is None:
    source = (mbpp_source() if spec.tfds_name is None
              else tasks.tfds_source(spec.tfds_name, spec.splits))
  template = prompts.template(spec.template)
  try:
    metric_fn = metrics.metric_for_task(name)
  except ValueError:
    raise ValueError(f"prompt task {name!r}: its name starts with no known task family, so it "
                     "has no metric; start it like the task it stands for (e.g. "
                     "'squad_fixture').") from None
  seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name, source=source, preprocessors=[format_prompts(template, spec.fields)],
      output_features={"inputs": TEXT, "targets": TEXT}, metric_fns=[metric_fn])
  _TEMPLATE_OF[name] = template
  return task


def register_prompt_tasks() -> None:
  """(Re-)registers every task of PROMPT_TASKS; safe to call repeatedly."""
  for name, spec in PROMPT_TASKS.items():
    add_prompt_task(name, spec)


register_prompt_tasks()
