"""Parsers for the raw Debian files behind the offline corpora.

Pure functions over text; no I/O beyond iterating lines that the caller opens.

* Ding dictionary (`trans-de-en`, file `usr/share/trans/de-en`): one entry per
  line, ``DE | DE … :: EN | EN …``; ``|`` aligns sub-entries, ``;`` separates
  alternatives, ``{m}``/``[...]``/``(...)``/``<...>`` are annotations.
* DDTP ``Translation-<lang>`` files: RFC-822 blocks with ``Package``,
  ``Description-md5`` and ``Description-<lang>`` (synopsis on the first line,
  long description on continuation lines, `` .`` between paragraphs).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Iterator

# Innermost annotation groups; applied repeatedly so nested ones vanish too.
_ANNOTATION_RE = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)|<[^<>]*>")
# Chat acronyms such as "/WTHDTM/" that Ding appends to example sentences.
_ACRONYM_RE = re.compile(r"(?:^|\s)/[^/\s]+/(?=\s|$)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,!?;:])")
_SENTENCE_END = (".", "?", "!")
# "…" marks a slot in a template ("The day when … is near."), not a sentence.
_PLACEHOLDER = "\u2026"


def normalize_space(text: str) -> str:
  """Collapses runs of whitespace to one space and strips the ends."""
  return " ".join(text.split())


def strip_ding_annotations(text: str) -> str:
  """Removes Ding's grammatical/usage annotations and tidies the spacing."""
  previous = None
  while previous != text:
    previous = text
    text = _ANNOTATION_RE.sub(" ", text)
  text = _ACRONYM_RE.sub(" ", text)
  text = normalize_space(text)
  return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)


def is_sentence(text: str, min_words: int = 4) -> bool:
  """True for a complete sentence: ends in . ? or ! and has >= min_words words."""
  return (text.endswith(_SENTENCE_END) and len(text.split()) >= min_words
          and _PLACEHOLDER not in text)


def parse_ding_line(line: str, min_words: int = 4) -> list[tuple[str, str]]:
  """Extracts (english, german) sentence pairs from one Ding dictionary line.

  Sub-entries are paired by position when both sides have the same number of
  ``|``-separated sub-entries (otherwise the alignment is unknown and the line
  yields nothing). Of ``;``-separated alternatives the first is kept. A pair is
  kept when both sides are sentences (see `is_sentence`).

  Args:
    line: one line of the `de-en` file (German `::` English).
    min_words: minimum words on each side.

  Returns:
    list of (english, german) pairs, possibly empty.
  """
  line = line.strip()
  if not line or line.startswith("#"):
    return []
  sides = line.split(" :: ")
  if len(sides) != 2:
    return []
  german_parts = sides[0].split(" | ")
  english_parts = sides[1].split(" | ")
  if len(german_parts) != len(english_parts):
    return []
  pairs = []
  for german, english in zip(german_parts, english_parts):
    german = strip_ding_annotations(german).split("; ")[0].strip()
    english = strip_ding_annotations(english).split("; ")[0].strip()
    if is_sentence(german, min_words) and is_sentence(english, min_words):
      pairs.append((english, german))
  return pairs


def parse_ding(lines: Iterable[str], min_words: int = 4) -> list[tuple[str, str]]:
  """All (english, german) sentence pairs of a Ding file, in file order."""
  pairs = []
  for line in lines:
    pairs.extend(parse_ding_line(line, min_words))
  return pairs


def ding_version(lines: Iterable[str]) -> str | None:
  """The ``# Version :: ...`` header value of a Ding file, if present."""
  for line in lines:
    if not line.startswith("#"):
      return None
    if line.startswith("# Version ::"):
      return line.split("::", 1)[1].strip()
  return None


@dataclasses.dataclass(frozen=True)
class Description:
  """One DDTP entry: a package description in one language.

  Attributes:
    package: the package name (first one seen for this md5).
    md5: `Description-md5`, the md5 of the *English* description; it keys the
      translations of one description across languages.
    synopsis: the one-line summary.
    paragraphs: the long description, one whitespace-normalised string per
      paragraph.
  """
  package: str
  md5: str
  synopsis: str
  paragraphs: tuple[str, ...]

  @property
  def long_text(self) -> str:
    """The long description as one line (paragraphs joined by a space)."""
    return " ".join(self.paragraphs)


def _blocks(lines: Iterable[str]) -> Iterator[list[str]]:
  block: list[str] = []
  for line in lines:
    line = line.rstrip("\n")
    if line.strip():
      block.append(line)
    elif block:
      yield block
      block = []
  if block:
    yield block


def _paragraphs(continuation: list[str]) -> tuple[str, ...]:
  paragraphs, current = [], []
  for line in continuation:
    if line.strip() == ".":
      if current:
        paragraphs.append(normalize_space(" ".join(current)))
      current = []
    else:
      current.append(line)
  if current:
    paragraphs.append(normalize_space(" ".join(current)))
  return tuple(p for p in paragraphs if p)


def parse_translation_block(block: list[str], lang: str) -> Description | None:
  """Parses one RFC-822 block of a ``Translation-<lang>`` file.

  Args:
    block: the block's lines without trailing newlines.
    lang: language code of the `Description-<lang>` field (e.g. "en", "de").

  Returns:
    the Description, or None when the block has no md5 or no such field.
  """
  fields: dict[str, list[str]] = {}
  current = None
  for line in block:
    if line[:1] in (" ", "\t"):
      if current is not None:
        fields[current].append(line[1:])
      continue
    key, sep, value = line.partition(":")
    if not sep:
      current = None
      continue
    current = key.strip()
    fields[current] = [value.strip()]
  description = fields.get(f"Description-{lang}")
  md5 = fields.get("Description-md5")
  if not description or not md5 or not md5[0]:
    return None
  package = fields.get("Package", [""])[0]
  return Description(package=package, md5=md5[0],
                     synopsis=normalize_space(description[0]),
                     paragraphs=_paragraphs(description[1:]))


def parse_translation(lines: Iterable[str], lang: str) -> dict[str, Description]:
  """Parses a ``Translation-<lang>`` file into {Description-md5: Description}.

  Several packages can share one description (same md5); the first block wins,
  which is harmless because the text is identical by construction.
  """
  entries: dict[str, Description] = {}
  for block in _blocks(lines):
    entry = parse_translation_block(block, lang)
    if entry is not None and entry.md5 not in entries:
      entries[entry.md5] = entry
  return entries


def pair_paragraphs(english: dict[str, Description],
                    german: dict[str, Description]) -> list[tuple[str, str]]:
  """(english, german) paragraph pairs of descriptions translated into German.

  Paragraphs are paired by position, only for descriptions whose two versions
  have the same number of paragraphs (otherwise the alignment is unknown).

  Returns:
    pairs ordered by md5 then paragraph index (independent of file order).
  """
  pairs = []
  for md5 in sorted(english.keys() & german.keys()):
    en, de = english[md5].paragraphs, german[md5].paragraphs
    if len(en) == len(de):
      pairs.extend(zip(en, de))
  return pairs
