"""SentencePiece training determinism and the TF-free tokenizer (vs seqio)."""

import subprocess
import sys

import pytest

from spec_cascade.data import fixtures
from spec_cascade.data import offline
from spec_cascade.data import parsers
from spec_cascade.data import raw as raw_lib
from spec_cascade.data import vocab as vocab_lib

PIECES = 200


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
  raw = fixtures.write_raw_fixture(tmp_path_factory.mktemp("raw"))
  ding = parsers.parse_ding((raw / "de-en").read_text().splitlines())
  english = parsers.parse_translation((raw / "Translation-en").open(), "en")
  german = parsers.parse_translation((raw / "Translation-de").open(), "de")
  examples, _ = offline.build_examples(ding, english, german)
  return offline.examples_train_texts(examples)


@pytest.fixture(scope="module")
def model_path(texts, tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "a.model"
  vocab_lib.train_sentencepiece(texts, path, PIECES)
  return path


def test_training_is_deterministic(texts, model_path, tmp_path):
  again = tmp_path / "b.model"
  entry = vocab_lib.train_sentencepiece(texts, again, PIECES)
  assert again.read_bytes() == model_path.read_bytes()
  assert entry["sha256"] == raw_lib.sha256_file(model_path)
  # A different input gives a different model: the check above can fail.
  other = tmp_path / "c.model"
  vocab_lib.train_sentencepiece(texts[: len(texts) // 2], other, PIECES)
  assert other.read_bytes() != model_path.read_bytes()


def test_special_ids_and_sizes(model_path):
  tok = vocab_lib.SentencePieceTokenizer(model_path)
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.vocab_size == PIECES + 100
  ids = tok.encode("translate English to German: Be bekuri bu.")
  assert ids and 1 not in ids and 0 not in ids
  assert all(3 <= i < PIECES for i in ids)
  # Sentinels sit at the top, <extra_id_0> last (as seqio numbers them).
  assert tok.encode("<extra_id_0>") == [tok.vocab_size - 1]
  assert tok.encode("<extra_id_99>") == [PIECES]


def test_decode_stops_at_eos_and_skips_pad(model_path):
  tok = vocab_lib.SentencePieceTokenizer(model_path)
  text = "summarize: Be bekuri bu dogasa."
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.decode([0] + ids + [1] + tok.encode("tail") + [0]) == text
  assert tok.decode([1] + ids) == ""
  assert tok.decode_batch([ids, ids + [1, 5]]) == [text, text]


def test_rejects_models_without_t5_special_ids(texts, tmp_path):
  import sentencepiece as spm
  prefix = str(tmp_path / "bad")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=prefix,
                                 vocab_size=PIECES, minloglevel=2)  # unk 0, bos 1, eos 2
  with pytest.raises(ValueError, match="0/1/2"):
    vocab_lib.SentencePieceTokenizer(prefix + ".model")


def test_vocab_module_does_not_import_tensorflow():
  code = ("import sys; import spec_cascade.data.vocab, spec_cascade.data.offline, "
          "spec_cascade.metrics; "
          "print(any(m in sys.modules for m in ('tensorflow', 'seqio')))")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True).stdout
  assert out.strip() == "False"


def test_ids_match_seqio(model_path):
  seqio_vocab = vocab_lib.get_seqio_vocabulary(model_path)
  tok = vocab_lib.SentencePieceTokenizer(model_path)
  assert seqio_vocab.vocab_size == tok.vocab_size
  assert (seqio_vocab.eos_id, seqio_vocab.pad_id, seqio_vocab.unk_id) == (1, 0, 2)
  samples = ["translate English to German: Be bekuri bu dogasa ba!",
             "summarize: Güre göpono dabüka fe babi fü.", "Zqxj unseen wörds 123",
             "a <extra_id_0> b <extra_id_7> c", ""]
  for text in samples:
    ids = tok.encode(text)
    assert list(seqio_vocab.encode(text)) == ids
    assert seqio_vocab.decode(ids + [1, 7, 8]) == tok.decode(ids + [1, 7, 8])
  # TF tokenizer path (used inside seqio tasks) agrees too.
  tf_ids = seqio_vocab.encode_tf(samples[0]).numpy().tolist()
  assert tf_ids == tok.encode(samples[0])
