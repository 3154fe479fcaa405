"""BLEU / ROUGE with T5's conventions, checked against hand-computed values."""

import math

import numpy as np
import pytest

from spec_cascade import metrics

REF = "the quick brown fox jumps over the lazy dog"


def test_bleu_exact_match_is_100():
  assert metrics.bleu([REF, "ein Satz ."], [REF, "ein Satz ."])["bleu"] == pytest.approx(100.0)


def test_bleu_hand_computed_precisions():
  # One wrong word ("a" for "the"), same length (brevity penalty 1):
  # 1-grams 8/9, 2-grams 6/8, 3-grams 4/7, 4-grams 3/6.
  hyp = "the quick brown fox jumps over a lazy dog"
  expected = 100 * (8 / 9 * 6 / 8 * 4 / 7 * 3 / 6) ** 0.25
  assert metrics.bleu([REF], [hyp])["bleu"] == pytest.approx(expected, abs=1e-9)


def test_bleu_brevity_penalty_is_corpus_level():
  # All n-grams match; 5 of 9 words: BP = exp(1 - 9/5).
  assert metrics.bleu([REF], ["the quick brown fox jumps"])["bleu"] == pytest.approx(
      100 * math.exp(1 - 9 / 5), abs=1e-9)
  # Corpus statistics are pooled: one empty hypothesis halves the length.
  assert metrics.bleu([REF, REF], ["", REF])["bleu"] == pytest.approx(
      100 * math.exp(1 - 18 / 9), abs=1e-9)


def test_bleu_intl_tokenization_splits_punctuation():
  # 'intl' separates the final "." so "dog." still matches "dog ." exactly.
  assert metrics.bleu(["the cat sat on the mat ."], ["the cat sat on the mat."])[
      "bleu"] == pytest.approx(100.0)


def test_bleu_empty_prediction_is_zero():
  assert metrics.bleu([REF], [""])["bleu"] == 0.0


def test_rouge_exact_match_is_100():
  scores = metrics.rouge([REF, "A second one. With two sentences."],
                         [REF, "A second one. With two sentences."])
  assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeLsum": 100.0})


def test_rouge_hand_computed_single_example():
  # Prediction is the first 3 of 6 reference words.
  # rouge1: P 3/3, R 3/6 -> F 2/3; rouge2: P 2/2, R 2/5 -> F 4/7; LCS 3 -> as rouge1.
  scores = metrics.rouge(["the cat sat on the mat"], ["the cat sat"])
  assert scores["rouge1"] == pytest.approx(200 / 3)
  assert scores["rouge2"] == pytest.approx(400 / 7)
  assert scores["rougeLsum"] == pytest.approx(200 / 3)


def test_rouge_uses_stemming_and_lowercase():
  assert metrics.rouge(["The Cats were running"], ["the cat was run"])["rouge1"] == (
      pytest.approx(100 * 3 / 4))  # cats~cat, running~run; were != was


def test_rougelsum_uses_sentence_lines():
  # Sentence order swapped: per-sentence LCS union recovers all 6 words,
  # whereas one LCS over the whole text finds only 3.
  target = "a b c. d e f."
  prediction = "d e f. a b c."
  scores = metrics.rouge([target], [prediction], score_keys=("rougeL", "rougeLsum"))
  assert scores["rougeLsum"] == pytest.approx(100.0)
  assert scores["rougeL"] == pytest.approx(50.0)


def test_rouge_bootstrap_mid_is_reproducible_and_preserves_rng():
  targets = ["the cat sat on the mat", "a dog ran in the park", "birds fly high"]
  predictions = ["the cat sat", "a dog ran far away", "fish swim deep"]
  np.random.seed(123)
  before = np.random.random()
  np.random.seed(123)
  first = metrics.rouge(targets, predictions)
  assert np.random.random() == before  # caller's RNG stream untouched
  assert metrics.rouge(targets, predictions) == first
  # The bootstrap mid is the median of resampled means: near the plain mean.
  per_example = [metrics.rouge([t], [p])["rouge1"] for t, p in zip(targets, predictions)]
  assert first["rouge1"] == pytest.approx(np.mean(per_example), abs=3.0)


def test_rouge_empty_prediction_is_zero():
  assert metrics.rouge([REF], [""]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}


@pytest.mark.parametrize("fn", [metrics.bleu, metrics.rouge])
def test_bad_input_is_rejected(fn):
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    fn(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="empty"):
    fn([], [])
  with pytest.raises(TypeError):
    fn("abc", "abc")


def test_task_metric_lookup():
  for task in ("wmt_t2t_ende_v003", "debian_ende"):
    assert metrics.primary_metric(task) == "bleu"
    assert metrics.metric_for_task(task) is metrics.bleu
  for task in ("cnn_dailymail_v002", "xsum", "debian_summarize"):
    assert metrics.primary_metric(task) == "rouge2"
    assert metrics.metric_for_task(task) is metrics.rouge
  with pytest.raises(ValueError, match="glue"):
    metrics.primary_metric("glue_cola")
