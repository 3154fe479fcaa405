"""Offline corpora built from Debian's archive: EN→DE translation and summarization.

Built at first use into a cache directory (never committed: the text is not
ours to relicense), with deterministic train/validation/test splits, a
SentencePiece vocabulary and a manifest of sources, filters, counts and hashes.

* ``debian_ende``: Ding example sentences (package `trans-de-en`) and Debian
  package-description paragraphs with their German DDTP translations.
  Inputs ``"translate English to German: " + english``, targets German.
* ``debian_summarize``: English long package description → its one-line
  synopsis. Inputs ``"summarize: " + description``, targets the synopsis.

Splits are a pure function of the text (a hash bucket), so they stay put when
the archive changes: an example never moves between train and test. Pure
Python; no TensorFlow.

Cache location, in order: the `cache_dir` argument, gin
``offline_settings.cache_dir``, env ``SPEC_CASCADE_CACHE``,
``~/.cache/spec_cascade``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

from absl import logging
import gin
import tqdm

from spec_cascade.data import parsers
from spec_cascade.data import raw as raw_lib
from spec_cascade.data import tokenizer as tokenizer_lib
# The tasks, their filters and the split rule have their own module; offline's names for
# them stay.
from spec_cascade.data.corpus_examples import (  # noqa: F401  pylint: disable=unused-import
    PREFIXES, SPLITS, TASK_ENDE, TASK_SUMMARIZE, TASKS, Filters, build_examples, split_of)

# Bumped whenever parsing, filtering or splitting changes, so an old cache is
# never mistaken for a new one.
FORMAT_VERSION = 1
CORPUS_DIRNAME = f"corpora-v{FORMAT_VERSION}"
MANIFEST = "manifest.json"
ENV_CACHE = "SPEC_CASCADE_CACHE"
ENV_RAW = "SPEC_CASCADE_RAW_DIR"
DEFAULT_CACHE = pathlib.Path("~/.cache/spec_cascade")
DEFAULT_VOCAB_PIECES = 4000


class CacheDirError(RuntimeError):
  """The cache directory cannot be used; the message says how to fix it."""


class CorruptCacheError(RuntimeError):
  """A cached corpus failed verification against its manifest."""


@dataclasses.dataclass(frozen=True)
class Settings:
  cache_dir: str | None
  raw_dir: str | None
  vocab_pieces: int


@gin.configurable
def offline_settings(cache_dir: str | None = None,
                     raw_dir: str | None = None,
                     vocab_pieces: int = DEFAULT_VOCAB_PIECES) -> Settings:
  """Gin-configurable knobs of the offline corpora.

  Args:
    cache_dir: where corpora, raw files and vocabularies are cached (else env
      SPEC_CASCADE_CACHE, else ~/.cache/spec_cascade).
    raw_dir: directory holding hand-provided `de-en`, `Translation-en`,
      `Translation-de` (else env SPEC_CASCADE_RAW_DIR, else fetched via apt).
    vocab_pieces: SentencePiece pieces of the trained vocabulary (the seqio
      vocabulary adds 100 extra ids on top).
  """
  if vocab_pieces < 100:
    raise ValueError(f"vocab_pieces={vocab_pieces} is too small; use >= 100 "
                     "(default 4000).")
  return Settings(cache_dir, raw_dir, int(vocab_pieces))


def resolve_cache_dir(cache_dir: os.PathLike | str | None = None) -> pathlib.Path:
  """The cache root: argument, else gin, else $SPEC_CASCADE_CACHE, else default."""
  chosen = (cache_dir or offline_settings().cache_dir or os.environ.get(ENV_CACHE)
            or DEFAULT_CACHE)
  return pathlib.Path(chosen).expanduser().absolute()


def resolve_raw_dir() -> pathlib.Path | None:
  """Hand-provided raw files directory (gin, else $SPEC_CASCADE_RAW_DIR), if any."""
  chosen = offline_settings().raw_dir or os.environ.get(ENV_RAW)
  return pathlib.Path(chosen).expanduser() if chosen else None


def corpus_dir(cache_dir: os.PathLike | str | None = None) -> pathlib.Path:
  """Where the corpora live (or will live); builds nothing."""
  return resolve_cache_dir(cache_dir) / CORPUS_DIRNAME


# --------------------------------------------------------------------------
# Cache handling.


def _check_writable(root: pathlib.Path) -> None:
  try:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
      pass
  except OSError as e:
    raise CacheDirError(
        f"The cache directory {root} is not writable ({e.strerror}). Point "
        f"${ENV_CACHE} (or gin `offline_settings.cache_dir`) at a writable "
        f"directory.") from e


def _write_jsonl(path: pathlib.Path, rows: list[dict[str, str]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _read_manifest(directory: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise CorruptCacheError(f"{directory} has no {MANIFEST} (partial build?)") from e
  except ValueError as e:
    raise CorruptCacheError(f"{directory / MANIFEST} is not valid JSON: {e}") from e


def write_manifest(directory: pathlib.Path, manifest: Mapping[str, Any]) -> None:
  """Writes the manifest atomically (temp file + rename)."""
  tmp = directory / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False),
                 encoding="utf-8")
  os.replace(tmp, directory / MANIFEST)


def verify(directory: os.PathLike) -> dict[str, Any]:
  """Checks every file listed in the manifest against its sha256.

  Returns:
    the manifest.

  Raises:
    CorruptCacheError: a file is missing, altered, or the manifest is unusable.
  """
  directory = pathlib.Path(directory)
  manifest = _read_manifest(directory)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise CorruptCacheError(
        f"{directory} has format {manifest.get('format_version')}, expected "
        f"{FORMAT_VERSION}")
  try:
    listed = [(info["file"], info["sha256"]) for task in TASKS
              for info in manifest["tasks"][task]["splits"].values()]
    listed += [(v["file"], v["sha256"]) for v in manifest.get("vocabs", {}).values()]
  except (KeyError, TypeError) as e:
    raise CorruptCacheError(f"{directory / MANIFEST} lacks {e}") from e
  for name, expected in listed:
    path = directory / name
    if not path.is_file():
      raise CorruptCacheError(f"{path} is missing")
    if raw_lib.sha256_file(path) != expected:
      raise CorruptCacheError(f"{path} does not match its sha256 in the manifest")
  return manifest


@functools.lru_cache(maxsize=8)
def _verified_manifest(directory: str, stamp: tuple[int, int]) -> dict[str, Any]:
  # Keyed by the manifest's (mtime_ns, size): re-verified after any rewrite.
  del stamp
  return verify(directory)


def _manifest_stamp(directory: pathlib.Path) -> tuple[int, int]:
  st = (directory / MANIFEST).stat()
  return (st.st_mtime_ns, st.st_size)


def load_manifest(cache_dir: os.PathLike | str | None = None) -> dict[str, Any]:
  """The verified manifest of the corpora (building them if needed)."""
  directory = build_corpora(cache_dir)
  return _verified_manifest(str(directory), _manifest_stamp(directory))


def _is_valid(directory: pathlib.Path) -> bool:
  try:
    verify(directory)
    return True
  except (CorruptCacheError, OSError):
    return False


def _discard(directory: pathlib.Path) -> None:
  # Rename first so a half-deleted tree is never mistaken for a corpus.
  trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}-{time.time_ns()}")
  os.rename(directory, trash)
  shutil.rmtree(trash, ignore_errors=True)


def build_corpora(cache_dir: os.PathLike | str | None = None,
                  force: bool = False) -> pathlib.Path:
  """Builds the offline corpora (and the default vocabulary) unless cached.

  Idempotent: a verified cache is returned as is. A corrupt or partial cache is
  reported and rebuilt, never used. The build happens in a temporary directory
  that is renamed into place only when complete.

  Args:
    cache_dir: cache root (default: see module docstring).
    force: rebuild even if a verified cache exists (fetching raw files again).

  Returns:
    the corpus directory (`<cache>/corpora-v1`).
  """
  root = resolve_cache_dir(cache_dir)
  final = root / CORPUS_DIRNAME
  if final.exists() and not force:
    try:
      _verified_manifest(str(final), _manifest_stamp(final))
      return final
    except (CorruptCacheError, OSError) as e:
      logging.warning("Offline corpus cache %s is unusable (%s); rebuilding it.", final, e)
  _check_writable(root)
  started = time.time()
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".corpora-build-", dir=root))
  try:
    manifest = _build_into(staging, root, refresh=force)
    manifest["build_seconds"] = round(time.time() - started, 1)
    write_manifest(staging, manifest)
    if final.exists():
      if not force and _is_valid(final):
        # Another process finished first with a valid corpus: keep theirs.
        shutil.rmtree(staging, ignore_errors=True)
        return final
      _discard(final)
    try:
      os.rename(staging, final)
    except OSError:
      # Another process renamed its corpus into place in the meantime.
      verify(final)
      shutil.rmtree(staging, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  logging.info("Offline corpora ready in %s (%.1f s).", final, time.time() - started)
  _verified_manifest.cache_clear()
  return final


def train_vocab_into(directory: os.PathLike, texts: Sequence[str],
                     num_pieces: int) -> dict[str, Any]:
  """Trains the corpora's vocabulary into `directory`; its manifest entry."""
  path = pathlib.Path(directory) / tokenizer_lib.vocab_filename(num_pieces)
  logging.info("Training a %d-piece SentencePiece model on %d lines.", num_pieces, len(texts))
  entry = tokenizer_lib.train_sentencepiece(texts, path, num_pieces)
  entry["training_input"] = VOCAB_INPUT_NOTE
  return entry


def _build_into(staging: pathlib.Path, root: pathlib.Path, refresh: bool) -> dict[str, Any]:
  settings = offline_settings()
  manual = resolve_raw_dir()
  stages = tqdm.tqdm(total=5, desc="offline corpora", unit="stage")
  stages.set_postfix_str("raw files")
  raw_dir = raw_lib.obtain(root / "raw", root / "apt", manual_dir=manual, refresh=refresh)
  stages.update()

  stages.set_postfix_str("parse Ding")
  with open(raw_dir / "de-en", encoding="utf-8") as f:
    ding_lines = f.readlines()
  ding_pairs = parsers.parse_ding(ding_lines, Filters().ding_min_words)
  stages.update()

  stages.set_postfix_str("parse DDTP")
  with open(raw_dir / "Translation-en", encoding="utf-8") as f:
    english = parsers.parse_translation(f, "en")
  with open(raw_dir / "Translation-de", encoding="utf-8") as f:
    german = parsers.parse_translation(f, "de")
  stages.update()

  stages.set_postfix_str("split + write")
  examples, stats = build_examples(ding_pairs, english, german, Filters())
  tasks_manifest = {}
  for task in TASKS:
    (staging / task).mkdir()
    splits = {}
    for split in SPLITS:
      name = f"{task}/{split}.jsonl"
      _write_jsonl(staging / name, examples[task][split])
      splits[split] = {"file": name, "count": len(examples[task][split]),
                       "sha256": raw_lib.sha256_file(staging / name)}
    tasks_manifest[task] = {"prefix": PREFIXES[task], "splits": splits, **stats[task]}
  stages.update()

  stages.set_postfix_str(f"SentencePiece ({settings.vocab_pieces} pieces)")
  vocab_entry = train_vocab_into(staging, examples_train_texts(examples),
                                           settings.vocab_pieces)
  stages.update()
  stages.close()

  return {
      "format_version": FORMAT_VERSION,
      "sources": {**raw_lib.provenance(raw_dir),
                  "ding_header_version": parsers.ding_version(ding_lines)},
      "filters": dataclasses.asdict(Filters()),
      "split_rule": (
          "bucket = int(sha1(split_key)[:8], 16) % 1000; validation if bucket < 30, "
          "test if bucket < 60, else train. split_key: the English source for "
          "debian_ende, the first description paragraph for debian_summarize. "
          "Dedup by source text; ties keep the smallest (origin, target)."),
      "tasks": tasks_manifest,
      "vocabs": {str(settings.vocab_pieces): vocab_entry},
  }


# Characters of vocabulary-training text taken from each of the four parts
# (ende inputs/targets, summarize inputs/targets): keeps German as well
# represented as English and the single-threaded training well under a minute.
VOCAB_CHARS_PER_PART = 4_000_000
VOCAB_INPUT_NOTE = (
    f"train splits only: for each task, inputs (with prefix) and targets in "
    f"stored order, up to {VOCAB_CHARS_PER_PART} characters each")


def examples_train_texts(examples: Mapping[str, Mapping[str, list[dict[str, str]]]],
                         chars_per_part: int = VOCAB_CHARS_PER_PART) -> list[str]:
  """Vocabulary training text, from the train splits only.

  From each task's inputs (with prefix) and targets, rows are taken in their
  stored (hash) order until `chars_per_part` characters: a fixed pseudo-random
  sample.
  """
  texts = []
  for task in TASKS:
    for field in ("inputs", "targets"):
      used = 0
      for row in examples[task]["train"]:
        if used >= chars_per_part:
          break
        texts.append(row[field])
        used += len(row[field])
  return texts


def load_split(task: str, split: str,
               cache_dir: os.PathLike | str | None = None) -> list[dict[str, str]]:
  """Examples of one split, building the corpora on first use.

  Args:
    task: "debian_ende" or "debian_summarize".
    split: "train", "validation" or "test".
    cache_dir: cache root (default: see module docstring).

  Returns:
    list of {"inputs": str (with the T5 prefix), "targets": str, "id": str},
    in a fixed order.
  """
  if task not in TASKS:
    raise ValueError(f"Unknown offline task {task!r}; expected one of {TASKS}.")
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  directory = build_corpora(cache_dir)
  manifest = _verified_manifest(str(directory), _manifest_stamp(directory))
  path = directory / manifest["tasks"][task]["splits"][split]["file"]
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]
