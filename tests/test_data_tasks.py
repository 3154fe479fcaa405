"""seqio task registration: paper tasks, offline tasks, mixture (imports TensorFlow)."""

import gin
import pytest

seqio = pytest.importorskip("seqio")

from spec_cascade import metrics  # pylint: disable=g-import-not-at-top
from spec_cascade.data import fixtures
from spec_cascade.data import offline
from spec_cascade.data import tasks
from spec_cascade.data import vocab as vocab_lib

ALL = (*tasks.PAPER_TASKS, *tasks.OFFLINE_TASKS)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  """Offline tasks backed by a fixture corpus in a temporary cache."""
  monkeypatch.setenv(offline.ENV_CACHE, str(tmp_path / "cache"))
  monkeypatch.setenv(offline.ENV_RAW, str(fixtures.write_raw_fixture(tmp_path / "raw")))
  with gin.unlock_config():
    gin.bind_parameter("offline_settings.vocab_pieces", 200)
  tasks.OFFLINE_VOCABULARY.reset()
  yield tmp_path / "cache"
  tasks.OFFLINE_VOCABULARY.reset()
  gin.clear_config()


def test_everything_is_registered_without_building_anything(tmp_path, monkeypatch):
  monkeypatch.setenv(offline.ENV_CACHE, str(tmp_path))
  tasks.register_tasks()  # re-registration is fine
  tasks.register_tasks()
  for name in ALL:
    assert name in seqio.TaskRegistry.names()
  mixture = seqio.get_mixture_or_task(tasks.OFFLINE_MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == sorted(tasks.OFFLINE_TASKS)
  assert not any(tmp_path.iterdir()), "registration must not build corpora"
  assert seqio.get_mixture_or_task("wmt_t2t_ende_v003").metric_fns == [metrics.bleu]
  for name in ("cnn_dailymail_v002", "xsum", "debian_summarize"):
    assert seqio.get_mixture_or_task(name).metric_fns == [metrics.rouge]
  assert seqio.get_mixture_or_task("debian_ende").metric_fns == [metrics.bleu]


def test_paper_vocabulary_path_comes_from_gin():
  fresh = tasks.LazySentencePieceVocabulary(tasks.paper_vocabulary_path)
  assert fresh.sentencepiece_model_file == tasks.DEFAULT_PAPER_VOCAB
  with gin.unlock_config():
    gin.bind_parameter("paper_vocabulary_path.path", "/somewhere/spm.model")
  try:
    later = tasks.LazySentencePieceVocabulary(tasks.paper_vocabulary_path)
    assert later.sentencepiece_model_file == "/somewhere/spm.model"
  finally:
    gin.clear_config()


@pytest.mark.parametrize("name, hint", [
    ("wmt_t2t_ende_v003", "download_and_prepare"),
    ("cnn_dailymail_v002", "download_and_prepare"),
    ("xsum", "xsum-extracts-from-downloads.tar.gz"),
])
def test_missing_tfds_data_says_what_to_do(tmp_path, name, hint):
  tasks.set_tfds_data_dir(tmp_path)
  try:
    task = seqio.get_mixture_or_task(name)
    with pytest.raises(FileNotFoundError) as info:
      task.get_dataset(sequence_length={"inputs": 32, "targets": 32}, split="validation",
                       shuffle=False)
    message = str(info.value)
    assert str(tmp_path) in message and hint in message and "--tfds_data_dir" in message
  finally:
    tasks.set_tfds_data_dir(None)


def test_offline_task_yields_tokenized_examples(offline_cache):
  lengths = {"inputs": 64, "targets": 16}
  task = seqio.get_mixture_or_task("debian_ende")
  rows = offline.load_split("debian_ende", "validation")
  tok = vocab_lib.SentencePieceTokenizer(vocab_lib.get_vocab_path())
  examples = list(task.get_dataset(lengths, split="validation", shuffle=False).as_numpy_iterator())
  assert len(examples) == len(rows)
  for ex, row in zip(examples, rows):
    assert ex["inputs_pretokenized"].decode() == row["inputs"]
    assert ex["id"].decode() == row["id"]
    # T5 trimming: keep length-1 tokens, then EOS.
    assert ex["inputs"].tolist() == tok.encode(row["inputs"])[:63] + [1]
    assert ex["targets"].tolist() == tok.encode(row["targets"])[:15] + [1]
  assert task.output_features["targets"].vocabulary.vocab_size == 300


def test_offline_mixture_draws_from_both_tasks(offline_cache):
  mixture = seqio.get_mixture_or_task(tasks.OFFLINE_MIXTURE)
  ds = mixture.get_dataset({"inputs": 64, "targets": 16}, split="train", shuffle=True,
                           seed=0, num_epochs=1)
  tok = vocab_lib.SentencePieceTokenizer(vocab_lib.get_vocab_path())
  prefixes = {tok.decode(ex["inputs"]).split(":")[0] for ex in ds.take(60).as_numpy_iterator()}
  assert prefixes == {"translate English to German", "summarize"}
