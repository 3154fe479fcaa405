"""A decoder-only model's own tokenizer: its SentencePiece model or its `tokenizer.json`.

T5 tasks are tokenized with T5's vocabulary (pad 0, EOS 1, no BOS, 100 sentinels appended,
`tokenizer.SentencePieceTokenizer`). A decoder-only checkpoint brings its own vocabulary with
its own special ids, and the prompts fed to it must start with its BOS. Two files describe
them in the checkpoints we read:

* ``tokenizer.model`` (SentencePiece; Gemma, Gemma 2, Llama 2): BOS / EOS / pad ids are the
  model file's own (Gemma: pad 0, EOS 1, BOS 2). Read with `sentencepiece`, no sentinels.
* ``tokenizer.json`` (Hugging Face `tokenizers`; Llama 3, Qwen2): BOS is the token that
  ``tokenizer_config.json`` names (``bos_token``, honouring ``add_bos_token``), else
  ``config.json``'s ``bos_token_id``; none when neither names one (Qwen2). Needs the
  `tokenizers` package (installed with transformers).

`encode` returns the text's ids without any special token; callers add BOS themselves
(`prompts.PromptCodec`), so "BOS prepended exactly once" holds whatever the file's
post-processor would do.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
_CONFIG_FILES = ("tokenizer_config.json", "config.json")


def find_tokenizer(directory: str | os.PathLike) -> pathlib.Path | None:
  """The tokenizer file in a checkpoint folder (tokenizer.model first), or None."""
  directory = pathlib.Path(directory)
  for name in (SENTENCEPIECE_FILE, TOKENIZER_JSON):
    if (directory / name).is_file():
      return directory / name
  return None


class ModelTokenizer:
  """Text ↔ ids with a decoder-only model's vocabulary.

  Attributes:
    path: the tokenizer file.
    vocab_size: ids the tokenizer can produce (special and added tokens included).
    bos_id: the id prompts start with, or None when the vocabulary has no BOS.
    eos_id: the tokenizer's own end-of-sequence id, or None (the model's config decides what
      ends a generation; see `prompts.PromptCodec`).
  """

  def __init__(self, path: str | os.PathLike):
    path = pathlib.Path(path)
    if path.is_dir():
      found = find_tokenizer(path)
      if found is None:
        raise FileNotFoundError(f"{path} holds neither {SENTENCEPIECE_FILE} nor "
                                f"{TOKENIZER_JSON}: no tokenizer for a decoder-only model.")
      path = found
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file {path} does not exist.")
    self.path = path
    if path.suffix == ".json":
      self._load_json(path)
    else:
      self._load_sentencepiece(path)

  def _load_sentencepiece(self, path: pathlib.Path) -> None:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(path.read_bytes())
    except RuntimeError as e:
      raise ValueError(f"{path} is not a SentencePiece model ({e}).") from None
    self._sp, self._hf = sp, None
    self.vocab_size = int(sp.get_piece_size())
    # SentencePiece reports a disabled special id as -1.
    self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
    self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
    self._skip = {i for i in (sp.pad_id(), sp.bos_id(), sp.eos_id()) if i >= 0}

  def _load_json(self, path: pathlib.Path) -> None:
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f"{path} is a Hugging Face tokenizer.json: reading it needs the "
                        "`tokenizers` package (pip install tokenizers).") from None
    self._sp, self._hf = None, tokenizers.Tokenizer.from_file(str(path))
    self.vocab_size = int(self._hf.get_vocab_size(with_added_tokens=True))
    settings = _json_settings(path.parent)
    self.bos_id = self._token_id(settings.get("bos"), path)
    self.eos_id = self._token_id(settings.get("eos"), path)
    self._skip = set()

  def _token_id(self, token, path: pathlib.Path) -> int | None:
    if token is None or isinstance(token, int):
      return token
    found = self._hf.token_to_id(token)
    if found is None:
      raise ValueError(f"{path.parent}: the special token {token!r} its config names is not "
                       f"in {path.name}.")
    return int(found)

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, no BOS or EOS added."""
    if self._sp is not None:
      return list(self._sp.encode(text, out_type=int))
    return list(self._hf.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; special tokens and ids outside the vocabulary are left out."""
    ids = [int(i) for i in ids]
    ids = [i for i in ids if 0 <= i < self.vocab_size and i not in self._skip]
    if self._sp is not None:
      return self._sp.decode(ids)
    return self._hf.decode(ids, skip_special_tokens=True)


def _special(value):
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _json_settings(directory: pathlib.Path) -> dict:
  """{'bos': token or id or None, 'eos': ...} from tokenizer_config.json, then config.json."""
  out = {"bos": None, "eos": None}
  config_file = directory / _CONFIG_FILES[0]
  if config_file.is_file():
    cfg = json.loads(config_file.read_text(encoding="utf-8"))
    if cfg.get("add_bos_token", True):
      out["bos"] = _special(cfg.get("bos_token"))
    out["eos"] = _special(cfg.get("eos_token"))
    return out
  model_file = directory / _CONFIG_FILES[1]
  if model_file.is_file():
    cfg = json.loads(model_file.read_text(encoding="utf-8"))
    for key in ("bos", "eos"):
      value = cfg.get(f"{key}_token_id")
      out[key] = value[0] if isinstance(value, list) and value else value
  return out
