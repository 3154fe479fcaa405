"""SentencePiece training with T5's special ids, and a TF-free tokenizer.

A vocabulary is trained deterministically (fixed seed, one thread, the
whole train split in a fixed order, no sampling) on the train splits of the
offline tasks, with T5's special ids: pad 0, eos 1, unk 2, no bos. Like
`seqio.SentencePieceVocabulary(path, extra_ids=100)`, `SentencePieceTokenizer`
appends 100 sentinel pieces ``<extra_id_99>`` … ``<extra_id_0>`` so ids agree
with seqio's (``<extra_id_0>`` is the last id).
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Iterable, Sequence

from absl import logging
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from spec_cascade.data import raw as raw_lib

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
EXTRA_IDS = 100
SEED = 20250101
# Every trainer option that affects the model, recorded in the manifest.
_TRAINER_OPTIONS = {
    "model_type": "unigram",
    "pad_id": PAD_ID, "eos_id": EOS_ID, "unk_id": UNK_ID, "bos_id": -1,
    "pad_piece": "<pad>", "eos_piece": "</s>", "unk_piece": "<unk>",
    # Every character of the training text gets a piece (~190 of them): with
    # 0.9995, `@ < > = [ ] ~ %` and capital umlauts became <unk>.
    "character_coverage": 1.0,
    "normalization_rule_name": "nmt_nfkc",
    # Use all sentences in the given order: no sampling, no shuffling.
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "num_threads": 1,
    "max_sentence_length": 16384,
}


def vocab_filename(num_pieces: int) -> str:
  return f"sentencepiece_{num_pieces}.model"


def train_sentencepiece(texts: Sequence[str], model_path: os.PathLike,
                        num_pieces: int) -> dict[str, Any]:
  """Trains a unigram SentencePiece model on `texts` and writes it atomically.

  Args:
    texts: training lines, used in the given order (newlines become spaces).
    model_path: output `.model` file.
    num_pieces: pieces in the model (incl. pad/eos/unk; excl. extra ids).

  Returns:
    manifest entry {"file", "sha256", "pieces", "vocab_size", "trainer"}.
  """
  model_path = pathlib.Path(model_path)
  if num_pieces < 100:
    raise ValueError(f"num_pieces={num_pieces} is too small; use >= 100.")
  spm.set_random_generator_seed(SEED)
  # Written through a buffer, not a model_prefix: the prefix would be stored
  # in the model's trainer_spec and make its bytes depend on a temp path.
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=(" ".join(t.split()) for t in texts),
      model_writer=buffer, vocab_size=num_pieces, minloglevel=2,
      **_TRAINER_OPTIONS)
  tmp = model_path.with_name(f".{model_path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(buffer.getvalue())
  os.replace(tmp, model_path)
  return {"file": model_path.name, "sha256": raw_lib.sha256_file(model_path),
          "pieces": num_pieces, "vocab_size": num_pieces + EXTRA_IDS,
          "extra_ids": EXTRA_IDS, "seed": SEED, "trainer": dict(_TRAINER_OPTIONS),
          "training_lines": len(texts)}


def _with_extra_ids(model_bytes: bytes, extra_ids: int) -> bytes:
  """Appends seqio's sentinel pieces (`▁<extra_id_{i}>`, i descending)."""
  model = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
  for i in reversed(range(extra_ids)):
    model.pieces.add(piece=f"\u2581<extra_id_{i}>", score=0.0,
                     type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
  return model.SerializeToString()


class SentencePieceTokenizer:
  """Pure-sentencepiece tokenizer with seqio's ids (no TensorFlow).

  Attributes:
    vocab_size: pieces + extra ids.
    eos_id: 1. pad_id: 0. unk_id: 2.
  """

  eos_id = EOS_ID
  pad_id = PAD_ID
  unk_id = UNK_ID

  def __init__(self, path: os.PathLike | str, extra_ids: int = EXTRA_IDS):
    self.path = pathlib.Path(path)
    self.extra_ids = extra_ids
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(_with_extra_ids(self.path.read_bytes(), extra_ids))
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(
          f"{self.path} has pad/eos/unk ids {self._sp.pad_id()}/{self._sp.eos_id()}/"
          f"{self._sp.unk_id()}; T5 models need 0/1/2.")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without EOS."""
    return self._sp.encode(text, out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; PAD ignored, out-of-range ids → unk."""
    clean = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      clean.append(i if 0 <= i < self.vocab_size else UNK_ID)
    return self._sp.decode(clean)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
    return [self.decode(ids) for ids in batch]


def get_seqio_vocabulary(path: os.PathLike | str, extra_ids: int = EXTRA_IDS):
  """`seqio.SentencePieceVocabulary` for `path` (imports seqio/TF lazily)."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)
