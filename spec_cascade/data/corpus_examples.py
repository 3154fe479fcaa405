"""The offline corpora's examples, from parsed Debian data: the two tasks, their length
filters, deduplication and the hash rule that assigns every example its split.

Pure functions of the parsed text; `offline` fetches, parses, caches and verifies what
they build. Changing what they produce needs a new `offline.FORMAT_VERSION`, so an old
cache is never mistaken for a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Mapping

from spec_cascade.data import parsers

TASK_ENDE = "debian_ende"
TASK_SUMMARIZE = "debian_summarize"
TASKS = (TASK_ENDE, TASK_SUMMARIZE)
SPLITS = ("train", "validation", "test")
PREFIXES = {
    TASK_ENDE: "translate English to German: ",
    TASK_SUMMARIZE: "summarize: ",
}

# Per-mille buckets of sha1(split key): [0, 30) validation, [30, 60) test.
_BUCKETS = 1000
_VALIDATION_BUCKETS = 30
_TEST_BUCKETS = 30


def split_of(key: str) -> str:
  """The split ("train"/"validation"/"test") of an example with split key `key`.

  A hash bucket of the text itself, so the assignment never depends on which
  other examples exist, on file order or on archive updates.
  """
  bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % _BUCKETS
  if bucket < _VALIDATION_BUCKETS:
    return "validation"
  if bucket < _VALIDATION_BUCKETS + _TEST_BUCKETS:
    return "test"
  return "train"


def _text_id(text: str) -> str:
  return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Filters:
  """Length filters, recorded in the manifest.

  Sentence/paragraph pairs are kept (the CPU models see at most ~150 words);
  summarization keeps descriptions of 30..200 words: shorter ones are barely
  longer than their synopsis, longer ones exceed small models' input lengths.
  """
  ding_min_words: int = 4
  ende_max_words: int = 150
  ende_max_length_ratio: float = 3.0
  summarize_min_words: int = 30
  summarize_max_words: int = 200


def _pair_ok(english: str, german: str, f: Filters) -> str | None:
  """None if an EN→DE pair passes the filters, else the reason it fails."""
  if english == german:
    return "untranslated"
  n_en, n_de = len(english.split()), len(german.split())
  if max(n_en, n_de) > f.ende_max_words:
    return "too_long"
  if max(n_en, n_de) > f.ende_max_length_ratio * min(n_en, n_de):
    return "length_ratio"
  return None


def _dedupe(candidates: Iterable[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
  """One example per source text: the smallest (origin, target) wins.

  Candidates are (source, target, origin, split_key); the choice depends on
  the set of candidates only, not on their order.
  """
  best: dict[str, tuple[str, str, str, str]] = {}
  for cand in candidates:
    source, target, origin, _ = cand
    kept = best.get(source)
    if kept is None or (origin, target) < (kept[2], kept[1]):
      best[source] = cand
  return list(best.values())


def _to_splits(task: str, examples: list[tuple[str, str, str, str]]
               ) -> dict[str, list[dict[str, str]]]:
  """Assigns deduplicated examples to splits; rows sorted by id (a hash)."""
  out: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
  for source, target, origin, key in examples:
    out[split_of(key)].append({
        "id": f"{origin}-{_text_id(source)}",
        "inputs": PREFIXES[task] + source,
        "targets": target,
    })
  for rows in out.values():
    rows.sort(key=lambda r: r["id"])
  return out


def build_examples(ding_pairs: Iterable[tuple[str, str]],
                   english: Mapping[str, parsers.Description],
                   german: Mapping[str, parsers.Description],
                   filters: Filters = Filters(),
                   ) -> tuple[dict[str, dict[str, list[dict[str, str]]]], dict[str, Any]]:
  """Turns parsed raw data into split examples for both tasks.

  Args:
    ding_pairs: (english, german) sentence pairs from `parsers.parse_ding`.
    english / german: `parsers.parse_translation` outputs, keyed by md5.
    filters: length filters.

  Returns:
    (examples, stats): examples[task][split] is a list of
    {"id", "inputs" (with the T5 prefix), "targets"}; stats holds the counts
    behind every filter and split, for the manifest.
  """
  stats: dict[str, Any] = {}

  # EN→DE: sentence pairs and aligned description paragraphs.
  ende, dropped = [], {"untranslated": 0, "too_long": 0, "length_ratio": 0}
  ding_pairs = list(ding_pairs)
  para_pairs = parsers.pair_paragraphs(english, german)
  for origin, pairs in (("ding", ding_pairs), ("ddtp", para_pairs)):
    for en, de in pairs:
      reason = _pair_ok(en, de, filters)
      if reason:
        dropped[reason] += 1
      else:
        ende.append((en, de, origin, en))
  unique = _dedupe(ende)
  stats[TASK_ENDE] = {
      "candidates": {"ding_sentence_pairs": len(ding_pairs),
                     "ddtp_paragraph_pairs": len(para_pairs)},
      "dropped": dropped,
      "duplicates_removed": len(ende) - len(unique),
      "by_origin": {o: sum(1 for e in unique if e[2] == o) for o in ("ding", "ddtp")},
  }
  examples = {TASK_ENDE: _to_splits(TASK_ENDE, unique)}

  # Summarization: long description → synopsis. The split key is the first
  # paragraph, so package families that share it (foo, foo-data, foo-doc) land
  # in one split, and that paragraph's EN→DE example lands in the same split.
  summ, dropped = [], {"no_synopsis": 0, "too_short": 0, "too_long": 0}
  for md5 in sorted(english):
    desc = english[md5]
    n_words = len(desc.long_text.split())
    if not desc.synopsis:
      dropped["no_synopsis"] += 1
    elif n_words < filters.summarize_min_words:
      dropped["too_short"] += 1
    elif n_words > filters.summarize_max_words:
      dropped["too_long"] += 1
    else:
      summ.append((desc.long_text, desc.synopsis, "ddtp", desc.paragraphs[0]))
  unique = _dedupe(summ)
  stats[TASK_SUMMARIZE] = {
      "candidates": {"ddtp_descriptions": len(english)},
      "dropped": dropped,
      "duplicates_removed": len(summ) - len(unique),
  }
  examples[TASK_SUMMARIZE] = _to_splits(TASK_SUMMARIZE, unique)
  for task in TASKS:
    stats[task]["counts"] = {s: len(examples[task][s]) for s in SPLITS}
  return examples, stats
