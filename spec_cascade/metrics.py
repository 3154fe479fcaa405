"""BLEU and ROUGE with T5's conventions, and the prompt tasks' answer metrics, on plain lists
of strings.

* BLEU: `sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp",
  tokenize="intl")`, no lowercasing, full-order (not effective-order) n-grams.
* ROUGE: `rouge_score` rouge1 / rouge2 / rougeLsum with the Porter stemmer,
  bootstrap aggregation (1000 resamples, fixed seed), mid F-measure × 100.
  rougeLsum needs one sentence per line: sentence ends are turned into
  newlines first (T5 does this for " . "; untokenized text gets the same
  treatment after ".", "!" or "?" followed by a space).

* exact_match / f1 (question answering): SQuAD's answer normalisation (lower case, no
  punctuation, no articles a / an / the, single spaces); a target may list several accepted
  answers joined by ANSWER_SEPARATOR and an example scores its best; mean × 100.
* accuracy (GSM8K): the prediction's final number (`final_number`: after "The answer is" when
  it says so, else its last number) equals the target's; mean × 100.

No TensorFlow or seqio here: these run on any host. As seqio metric functions
they take `(targets, predictions)`.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Callable, Sequence

import numpy as np

ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")
QA_KEYS = ("exact_match", "f1")
ACCURACY = "accuracy"
# Every metric a run can name, and the family that computes it (one call scores the family).
METRICS = ("bleu", *ROUGE_KEYS, *QA_KEYS, ACCURACY)
# Joins the accepted answers of one example in a target string (tasks with several answers).
ANSWER_SEPARATOR = " ||| "
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
    # The prompt tasks (data/prompt_tasks.py). MBPP's BLEU against the reference solution is
    # a stand-in: its real metric, pass@1, needs the generated code run in a sandbox.
    ("gsm8k", ACCURACY),
    ("mbpp", "bleu"),
    ("squad", "exact_match"),
    ("web_questions", "exact_match"),
    ("natural_questions", "exact_match"),
    ("trivia_qa", "exact_match"),
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
  _check(targets, predictions)
  score = _bleu_metric().corpus_score(list(predictions), [list(targets)])
  return {"bleu": float(score.score)}


def _bleu_metric():
  """sacrebleu's BLEU with T5's settings (the module docstring), shared by corpus scoring and
  the per-example statistics so both always count n-grams alike."""
  from sacrebleu.metrics import BLEU  # pylint: disable=g-import-not-at-top
  return BLEU(smooth_method="exp", smooth_value=0.0, force=False, lowercase=False,
              tokenize="intl", effective_order=False)


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


_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lower case, punctuation and articles removed, single spaces."""
  text = _ARTICLES_RE.sub(" ", text.lower().translate(_PUNCTUATION))
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  t, p = normalize_answer(target).split(), normalize_answer(prediction).split()
  if not t or not p:
    return float(t == p)
  common = sum((collections.Counter(t) & collections.Counter(p)).values())
  if not common:
    return 0.0
  precision, recall = common / len(p), common / len(t)
  return 2 * precision * recall / (precision + recall)


def _answers(target: str) -> list[str]:
  return target.split(ANSWER_SEPARATOR)


def _qa_scores(target: str, prediction: str) -> tuple[float, float]:
  """(exact match, token F1) of one prediction against its best accepted answer, × 100."""
  answers = _answers(target)
  em = max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
  return 100.0 * em, 100.0 * max(_token_f1(a, prediction) for a in answers)


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Question answering: {"exact_match", "f1"}, means over examples (0..100).

  A target lists its accepted answers joined by ANSWER_SEPARATOR; each example scores against
  its best one."""
  _check(targets, predictions)
  scores = np.asarray([_qa_scores(t, p) for t, p in zip(targets, predictions)])
  return {key: float(scores[:, i].mean()) for i, key in enumerate(QA_KEYS)}


_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS_RE = re.compile(r"answer is\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> float | None:
  """The number a worked answer ends on: the one after the first "The answer is" if the text
  says so (a model that runs on into another question says it again), else its last number;
  thousands separators dropped; None without any."""
  said = _ANSWER_IS_RE.findall(text)
  found = said or _NUMBER_RE.findall(text)
  if not found:
    return None
  try:
    return float(found[-1 if not said else 0].replace(",", ""))
  except ValueError:
    return None


def _number_match(target: str, prediction: str) -> float:
  want, got = final_number(target), final_number(prediction)
  return 100.0 * float(want is not None and got is not None and abs(want - got) < 1e-6)


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Math word problems: {"accuracy"}, the share (0..100) of predictions whose final number
  (`final_number`) equals the target's."""
  _check(targets, predictions)
  return {ACCURACY: float(np.mean([_number_match(t, p)
                                   for t, p in zip(targets, predictions)]))}


def scores(targets: Sequence[str], predictions: Sequence[str], metric: str) -> dict[str, float]:
  """All scores of `metric`'s family: {'bleu'}, the three ROUGE keys, {'exact_match', 'f1'} or
  {'accuracy'}."""
  return _family(metric)(targets, predictions)


def _family(metric: str) -> Callable[[Sequence[str], Sequence[str]], dict[str, float]]:
  if metric == "bleu":
    return bleu
  if metric in ROUGE_KEYS:
    return rouge
  if metric in QA_KEYS:
    return exact_match
  if metric == ACCURACY:
    return accuracy
  raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}.")


def primary_metric(task_name: str) -> str:
  """The metric a task is scored with, by task family: "bleu" for translation, "rouge2" for
  summarization, "exact_match" for question answering, "accuracy" for GSM8K."""
  for prefix, metric in _PRIMARY:
    if task_name.startswith(prefix):
      return metric
  raise ValueError(f"No metric known for task {task_name!r}; known task families: "
                   f"{[p for p, _ in _PRIMARY]}.")


def metric_for_task(task_name: str) -> Callable[[Sequence[str], Sequence[str]], dict[str, float]]:
  """The metric function (`bleu`, `rouge`, ...) of a task, `(targets, predictions) -> dict`."""
  return _family(primary_metric(task_name))


# ----------------------------------------------------------------------------------------------
# Per-example statistics and bootstrap intervals over examples.

# BLEU's per-example sufficient statistics, in sacrebleu's order.
BLEU_STAT_FIELDS = ("sys_len", "ref_len", "correct_1", "correct_2", "correct_3", "correct_4",
                    "total_1", "total_2", "total_3", "total_4")


def stat_fields(metric: str) -> tuple[str, ...]:
  """Names of the columns `example_stats` returns for `metric`."""
  if metric == "bleu":
    return BLEU_STAT_FIELDS
  if metric in ROUGE_KEYS:
    return (f"{metric}_f",)
  if metric in QA_KEYS or metric == ACCURACY:
    return (f"{metric}_score",)
  raise ValueError(f"no per-example statistics for metric {metric!r}; metrics: "
                   f"{', '.join(METRICS)}.")


def example_stats(targets: Sequence[str], predictions: Sequence[str], metric: str) -> np.ndarray:
  """Per-example statistics from which the corpus score of any resample of the examples follows.

  BLEU is a corpus metric (n-gram counts are summed before the precisions are taken), so an
  example's contribution is its sufficient statistics (`BLEU_STAT_FIELDS`), not a score. For
  ROUGE the corpus score is the mean of per-example F-measures, so each example contributes its
  F-measure × 100 of `metric`; likewise each example's score × 100 for the answer metrics.

  Returns:
    float64 [N, len(stat_fields(metric))].
  """
  fields = stat_fields(metric)
  _check(targets, predictions)
  if metric == "bleu":
    # sacrebleu's own per-segment extraction (tokenisation included): summing these rows gives
    # exactly the statistics `bleu` scores.
    stats = _bleu_metric()._extract_corpus_statistics(  # pylint: disable=protected-access
        list(predictions), [list(targets)])
    return np.asarray(stats, dtype=np.float64).reshape(-1, len(fields))
  if metric in QA_KEYS:
    column = QA_KEYS.index(metric)
    return np.asarray([[_qa_scores(t, p)[column]] for t, p in zip(targets, predictions)],
                      dtype=np.float64)
  if metric == ACCURACY:
    return np.asarray([[_number_match(t, p)] for t, p in zip(targets, predictions)],
                      dtype=np.float64)
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
  return np.asarray([[100.0 * scorer.score(target=_sentence_lines(t),
                                           prediction=_sentence_lines(p))[metric].fmeasure]
                     for t, p in zip(targets, predictions)], dtype=np.float64)


def _bleu_from_stats(stats: np.ndarray) -> np.ndarray:
  """Vectorised `sacrebleu.BLEU.compute_bleu` (exp smoothing, full order 4) over rows of summed
  statistics [..., 10]."""
  stats = np.asarray(stats, dtype=np.float64)
  sys_len, ref_len = stats[..., 0], stats[..., 1]
  correct, total = stats[..., 2:6], stats[..., 6:10]
  with np.errstate(divide="ignore", invalid="ignore"):
    bp = np.where(sys_len < ref_len,
                  np.where(sys_len > 0, np.exp(1.0 - ref_len / np.maximum(sys_len, 1e-300)), 0.0),
                  1.0)
    # mteval's smoothing: the k-th order with no match gets precision 100 / (2^k · total).
    zero = correct == 0
    smooth = 2.0 ** np.cumsum(zero, axis=-1)
    precision = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
    score = bp * np.exp(np.mean(np.log(precision), axis=-1))
  # sacrebleu scores 0 when nothing matches or an n-gram order has no candidates at all.
  valid = np.all(total > 0, axis=-1) & np.any(correct > 0, axis=-1)
  return np.where(valid, score, 0.0)


def corpus_scores(stats: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
  """Corpus scores of weighted example sets.

  Args:
    stats: [N, K] from `example_stats`.
    weights: [R, N] how often each example enters each set (a bootstrap resample's counts; a row
      of ones is the corpus itself).
    metric: the metric `stats` were computed for.
  Returns:
    float64 [R].
  """
  stats = np.asarray(stats, dtype=np.float64)
  weights = np.asarray(weights, dtype=np.float64)
  if stats.ndim != 2 or stats.shape[1] != len(stat_fields(metric)):
    raise ValueError(f"{metric} statistics must be [N, {len(stat_fields(metric))}], got "
                     f"{stats.shape}.")
  summed = weights @ stats
  if metric == "bleu":
    return _bleu_from_stats(summed)
  return summed[:, 0] / weights.sum(axis=1)


def bootstrap_weights(num_examples: int, reps: int, seed: int = 0) -> np.ndarray:
  """[reps, num_examples] counts of a bootstrap resample of the examples per row (fixed seed)."""
  if num_examples < 1 or reps < 1:
    raise ValueError(f"bootstrap needs examples and reps >= 1, got {num_examples}, {reps}.")
  idx = np.random.default_rng(seed).integers(0, num_examples, (reps, num_examples))
  rows = np.repeat(np.arange(reps), num_examples)
  weights = np.zeros((reps, num_examples))
  np.add.at(weights, (rows, idx.ravel()), 1.0)
  return weights


def percentile_interval(values, level: float = 0.9) -> tuple[float, float]:
  """The central `level` percentile interval of bootstrap replicates (±inf kept as bounds)."""
  tail = 100 * (1 - level) / 2
  values = np.asarray(values, dtype=np.float64)
  return (float(np.percentile(values, tail, method="lower")),
          float(np.percentile(values, 100 - tail, method="higher")))


def bootstrap_interval(targets: Sequence[str], predictions: Sequence[str], metric: str,
                       reps: int = 200, seed: int = 0, level: float = 0.9
                       ) -> tuple[float, float]:
  """The `level` bootstrap interval of the corpus metric, resampling examples (fixed seed).

  ROUGE resamples are scored as the mean of their examples' F-measures (the corpus score is the
  bootstrap mid of the same, which differs from the mean only by rouge_score's resampling noise).
  """
  stats = example_stats(targets, predictions, metric)
  scores = corpus_scores(stats, bootstrap_weights(len(stats), reps, seed), metric)
  return percentile_interval(scores, level)
