"""The offline corpora's SentencePiece vocabulary (built on first use), and the tokenizer API.

The vocabulary is trained by `spec_cascade.data.tokenizer` on the train splits of the offline
tasks; this module finds or builds it (`get_vocab_path`). The tokenizer names are re-exported
here, where callers have always found them; `tokenizer` itself depends on no corpus, so the
corpus build (`offline`) can train a vocabulary without importing this module back.
"""

from __future__ import annotations

import os
import pathlib

from spec_cascade.data import offline
from spec_cascade.data.tokenizer import (  # pylint: disable=unused-import  (the API)
    EOS_ID, EXTRA_IDS, PAD_ID, SEED, UNK_ID, SentencePieceTokenizer, get_seqio_vocabulary,
    train_sentencepiece, vocab_filename)


def get_vocab_path(cache_dir: os.PathLike | str | None = None,
                   num_pieces: int | None = None) -> pathlib.Path:
  """Path of the offline SentencePiece model, building corpora/vocab if needed.

  Args:
    cache_dir: cache root (see `offline.resolve_cache_dir`).
    num_pieces: piece count; default gin `offline_settings.vocab_pieces` (4000).
  """
  num_pieces = num_pieces or offline.offline_settings().vocab_pieces
  directory = offline.build_corpora(cache_dir)
  manifest = offline.load_manifest(cache_dir)
  entry = manifest.get("vocabs", {}).get(str(num_pieces))
  if entry is None:
    texts = offline.examples_train_texts(
        {task: {"train": offline.load_split(task, "train", cache_dir)}
         for task in offline.TASKS})
    entry = offline.train_vocab_into(directory, texts, num_pieces)
    manifest = dict(manifest)
    manifest["vocabs"] = {**manifest.get("vocabs", {}), str(num_pieces): entry}
    offline.write_manifest(directory, manifest)
  return directory / entry["file"]
