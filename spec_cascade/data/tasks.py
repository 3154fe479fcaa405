"""seqio tasks: the paper's (WMT EN→DE, CNN/DailyMail, XSum) and the offline ones.

Importing this module registers (imports seqio and TensorFlow):

* ``wmt_t2t_ende_v003``: TFDS `wmt_t2t_translate/de-en:1.0.0`,
  ``"translate English to German: " + en`` → de; BLEU. validation =
  newstest2013, test = newstest2014.
* ``cnn_dailymail_v002``: TFDS `cnn_dailymail:3.4.0`, ``"summarize: " +
  article`` → highlights; ROUGE.
* ``xsum``: TFDS `xsum:1.1.0` (manual download), ``"summarize: " + document``
  → summary; ROUGE.
* ``debian_ende``, ``debian_summarize`` (see `offline`) and the mixture
  ``debian_mix`` (equal rates).

The paper tasks use T5's 32k SentencePiece vocabulary; its path is gin
``paper_vocabulary_path.path``. The offline tasks use the vocabulary trained on
the offline corpora. Both are resolved at first use, so gin bindings parsed
after this import still apply, and nothing is built or downloaded at import.
Missing TFDS data produces an error that says how to prepare it.
"""

from __future__ import annotations

import os
from typing import Callable

import gin
import seqio
import tensorflow as tf

from spec_cascade import metrics
from spec_cascade.data import offline
from spec_cascade.data import vocab as vocab_lib

DEFAULT_PAPER_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
PAPER_TASKS = ("wmt_t2t_ende_v003", "cnn_dailymail_v002", "xsum")
OFFLINE_TASKS = offline.TASKS
OFFLINE_MIXTURE = "debian_mix"
_SPLITS = ("train", "validation", "test")
_LANGUAGE_NAMES = {"en": "English", "de": "German"}


@gin.configurable
def paper_vocabulary_path(path: str = DEFAULT_PAPER_VOCAB) -> str:
  """Path of T5's SentencePiece model for the paper tasks (gin-configurable)."""
  return path


def offline_vocabulary_path() -> str:
  """Path of the offline SentencePiece model (built on first call)."""
  return str(vocab_lib.get_vocab_path())


def set_tfds_data_dir(data_dir: str | os.PathLike | None) -> None:
  """Where the paper tasks read TFDS data (the `--tfds_data_dir` flag)."""
  seqio.set_tfds_data_dir_override(str(data_dir) if data_dir else None)


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` whose model path is found at first use.

  Tasks are registered at import time, before entry points parse gin files;
  resolving the path lazily lets a gin binding choose it, and keeps the offline
  vocabulary from being trained merely because this module was imported.
  """

  def __init__(self, path_fn: Callable[[], str], extra_ids: int = vocab_lib.EXTRA_IDS):
    self._path_fn = path_fn
    super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)

  def reset(self) -> None:
    """Forgets the resolved path, e.g. after the cache dir or gin changed."""
    self._sentencepiece_model_file = ""
    self._model = None

  def _resolve(self) -> None:
    if not self._sentencepiece_model_file:
      self._sentencepiece_model_file = str(self._path_fn())

  def _model_context(self):
    self._resolve()
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file


class CheckedTfdsDataSource(seqio.TfdsDataSource):
  """A `seqio.TfdsDataSource` that fails with instructions when data is missing.

  seqio would otherwise try to download (and, offline, fail obscurely or hang in
  retries); XSum cannot be downloaded automatically at all.
  """

  def __init__(self, tfds_name: str, how_to_prepare: str, splits: tuple[str, ...] = _SPLITS):
    super().__init__(tfds_name=tfds_name, splits=splits)
    self._how_to_prepare = how_to_prepare

  def require_prepared(self) -> None:
    """Raises FileNotFoundError (with instructions) unless the data is there."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    loader = self.tfds_dataset
    data_dir = loader.data_dir
    builder = tfds.builder(loader.name, data_dir=data_dir)
    if builder.is_prepared():
      return
    shown_dir = data_dir or str(builder.data_dir_root)
    raise FileNotFoundError(
        f"TFDS dataset {loader.name} is not prepared under {shown_dir}.\n"
        + self._how_to_prepare.format(data_dir=shown_dir)
        + "\nThen pass --tfds_data_dir=<that dir> (or call "
        "spec_cascade.data.tasks.set_tfds_data_dir(dir)). For runs without these "
        "datasets use the offline tasks debian_ende / debian_summarize.")

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    self.require_prepared()
    return super().get_dataset(*args, **kwargs)

  def num_input_examples(self, split: str):
    self.require_prepared()
    return super().num_input_examples(split)

  def list_shards(self, split: str):
    self.require_prepared()
    return super().list_shards(split)


_PREPARE = (
    "Prepare it once on a machine with internet access:\n"
    "  python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('{name}', data_dir='{{data_dir}}').download_and_prepare()\"")
_PREPARE_XSUM = (
    "XSum needs a manual download. Follow XSum-Dataset/README.md of the "
    "EdinburghNLP/XSum repository (its download and extraction scripts), pack "
    "the resulting folder as xsum-extracts-from-downloads.tar.gz and put that "
    "file in {{data_dir}}/downloads/manual/, then run (needs internet for the "
    "split list):\n"
    "  python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('{name}', data_dir='{{data_dir}}').download_and_prepare("
    "download_config=tfds.download.DownloadConfig("
    "manual_dir='{{data_dir}}/downloads/manual'))\"")


def tfds_source(tfds_name: str, splits: tuple[str, ...] = _SPLITS) -> CheckedTfdsDataSource:
  """A TFDS source whose missing data raises instructions to download and prepare it."""
  return CheckedTfdsDataSource(tfds_name, _PREPARE.format(name=tfds_name), splits)


@seqio.map_over_dataset
def _translate_en_de(x):
  prefix = f"translate {_LANGUAGE_NAMES['en']} to {_LANGUAGE_NAMES['de']}: "
  return {"inputs": tf.strings.join([prefix, x["en"]]), "targets": x["de"]}


def _summarize(article_key: str, summary_key: str):
  @seqio.map_over_dataset
  def fn(x):
    return {"inputs": tf.strings.join(["summarize: ", x[article_key]]),
            "targets": x[summary_key]}
  return fn


def _output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _offline_dataset_fn(task: str):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory split; seqio shuffles examples itself.
    rows = offline.load_split(task, split)
    return tf.data.Dataset.from_tensor_slices({
        key: tf.constant([row[key] for row in rows], dtype=tf.string)
        for key in ("inputs", "targets", "id")})
  return dataset_fn


PAPER_VOCABULARY = LazySentencePieceVocabulary(paper_vocabulary_path)
OFFLINE_VOCABULARY = LazySentencePieceVocabulary(offline_vocabulary_path)


def _add_task(name: str, **kwargs) -> None:
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)


def register_tasks() -> None:
  """(Re-)registers all tasks and the mixture; safe to call repeatedly."""
  tail = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]
  paper_features = _output_features(PAPER_VOCABULARY)
  _add_task(
      "wmt_t2t_ende_v003",
      source=CheckedTfdsDataSource("wmt_t2t_translate/de-en:1.0.0",
                                   _PREPARE.format(name="wmt_t2t_translate/de-en:1.0.0")),
      preprocessors=[_translate_en_de, *tail],
      output_features=paper_features, metric_fns=[metrics.bleu])
  _add_task(
      "cnn_dailymail_v002",
      source=CheckedTfdsDataSource("cnn_dailymail:3.4.0",
                                   _PREPARE.format(name="cnn_dailymail:3.4.0")),
      preprocessors=[_summarize("article", "highlights"), *tail],
      output_features=paper_features, metric_fns=[metrics.rouge])
  _add_task(
      "xsum",
      source=CheckedTfdsDataSource("xsum:1.1.0", _PREPARE_XSUM.format(name="xsum:1.1.0")),
      preprocessors=[_summarize("document", "summary"), *tail],
      output_features=paper_features, metric_fns=[metrics.rouge])

  offline_features = _output_features(OFFLINE_VOCABULARY)
  for task, metric in ((offline.TASK_ENDE, metrics.bleu),
                       (offline.TASK_SUMMARIZE, metrics.rouge)):
    _add_task(
        task,
        source=seqio.FunctionDataSource(_offline_dataset_fn(task), splits=_SPLITS),
        # Inputs already carry the T5 prefix (see offline.load_split).
        preprocessors=tail,
        output_features=offline_features, metric_fns=[metric])
  seqio.MixtureRegistry.remove(OFFLINE_MIXTURE)
  seqio.MixtureRegistry.add(OFFLINE_MIXTURE, list(OFFLINE_TASKS), default_rate=1.0)


register_tasks()
