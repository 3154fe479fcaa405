"""BLEU and ROUGE with T5's conventions, on plain lists of strings.

* BLEU: `sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp",
  tokenize="intl")`, no lowercasing, full-order (not effective-order) n-grams.
* ROUGE: `rouge_score` rouge1 / rouge2 / rougeLsum with the Porter stemmer,
  bootstrap aggregation (1000 resamples, fixed seed), mid F-measure × 100.
  rougeLsum needs one sentence per line: sentence ends are turned into
  newlines first (T5 does this for " . "; untokenized text gets the same
  treatment after ".", "!" or "?" followed by a space).

No TensorFlow or seqio here: these run on any host. As seqio metric functions
they take `(targets, predictions)`.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")
_BOOTSTRAP_SEED = 0
_SENTENCE_BREAK_RE = re.compile(r"(?<=[.!?])[ \t]+")

# Task name → primary metric. Prefix match on the task family so that
# variants (e.g. "cnn_dailymail_v002_1k") resolve too.
_PRIMARY = (
    ("wmt", "bleu"),
    ("debian_ende", "bleu"),
    ("cnn_dailymail", "rouge2"),
    ("xsum", "rouge2"),
    ("debian_summarize", "rouge2"),
)


def _check(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if isinstance(targets, str) or isinstance(predictions, str):
    raise TypeError("targets and predictions must be lists of strings, not a string.")
  if len(targets) != len(predictions):
    raise ValueError(f"Got {len(targets)} targets but {len(predictions)} predictions; "
                     "they must pair up one to one.")
  if not targets:
    raise ValueError("No examples: targets and predictions are empty.")


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (0..100) as T5 computes it.

  Args:
    targets: one reference per example.
    predictions: one hypothesis per example.

  Returns:
    {"bleu": float}.
  """
  import sacrebleu  # pylint: disable=g-import-not-at-top
  _check(targets, predictions)
  score = sacrebleu.corpus_bleu(
      list(predictions), [list(targets)], smooth_method="exp", smooth_value=0.0,
      force=False, lowercase=False, tokenize="intl", use_effective_order=False)
  return {"bleu": float(score.score)}


def _sentence_lines(text: str) -> str:
  """One sentence per line, as rougeLsum expects."""
  return _SENTENCE_BREAK_RE.sub("\n", text)


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ROUGE_KEYS,
          use_stemmer: bool = True) -> dict[str, float]:
  """ROUGE F-measures (0..100): bootstrap mid of the per-example scores.

  Args:
    targets: one reference per example.
    predictions: one summary per example.
    score_keys: rouge_score keys.
    use_stemmer: Porter-stem tokens before matching.

  Returns:
    {key: float} for each of `score_keys`.
  """
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  from rouge_score import scoring  # pylint: disable=g-import-not-at-top
  _check(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=use_stemmer)
  aggregator = scoring.BootstrapAggregator()
  for target, prediction in zip(targets, predictions):
    aggregator.add_scores(scorer.score(target=_sentence_lines(target),
                                       prediction=_sentence_lines(prediction)))
  # rouge_score resamples with the global numpy RNG: seed it for reproducible
  # numbers and restore the caller's state afterwards.
  state = np.random.get_state()
  try:
    np.random.seed(_BOOTSTRAP_SEED)
    result = aggregator.aggregate()
  finally:
    np.random.set_state(state)
  return {key: float(result[key].mid.fmeasure * 100) for key in score_keys}


def primary_metric(task_name: str) -> str:
  """"bleu" for translation tasks, "rouge2" for summarization tasks."""
  for prefix, metric in _PRIMARY:
    if task_name.startswith(prefix):
      return metric
  raise ValueError(f"No metric known for task {task_name!r}; known task families: "
                   f"{[p for p, _ in _PRIMARY]}.")


def metric_for_task(task_name: str) -> Callable[[Sequence[str], Sequence[str]], dict[str, float]]:
  """The metric function (`bleu` or `rouge`) of a task, `(targets, predictions) -> dict`."""
  return bleu if primary_metric(task_name) == "bleu" else rouge
