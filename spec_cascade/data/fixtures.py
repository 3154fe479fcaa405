"""Small synthetic raw files in the Debian formats, for tests and demos.

`write_raw_fixture` writes `de-en`, `Translation-en` and `Translation-de` in
the layout that SPEC_CASCADE_RAW_DIR expects, filled with seeded pseudo-words:
enough text to build both offline tasks and train a small vocabulary without
the network. No real corpus text is included.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS_EN = "aeiou"
_VOWELS_DE = "aeiouäöü"


def _word(rng: random.Random, vowels: str) -> str:
  return "".join(rng.choice(_CONSONANTS) + rng.choice(vowels)
                 for _ in range(rng.randint(1, 3)))


class _Lexicon:
  """A fixed pseudo-word vocabulary drawn with Zipf-like frequencies.

  Repeated words (as in real text) keep SentencePiece training fast.
  """

  def __init__(self, rng: random.Random, vowels: str, size: int = 120):
    self.rng = rng
    self.words = sorted({_word(rng, vowels) for _ in range(size)})
    self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]

  def sentence(self, n_words: int, end: str = ".") -> str:
    words = self.rng.choices(self.words, self.weights, k=n_words)
    return " ".join(words).capitalize() + end


def _wrap(text: str, width: int = 60) -> list[str]:
  lines, current = [], ""
  for word in text.split():
    if current and len(current) + 1 + len(word) > width:
      lines.append(current)
      current = word
    else:
      current = f"{current} {word}".strip()
  if current:
    lines.append(current)
  return lines


def _block(package: str, md5: str, lang: str, synopsis: str,
           paragraphs: list[str]) -> str:
  lines = [f"Package: {package}", f"Description-md5: {md5}",
           f"Description-{lang}: {synopsis}"]
  for i, paragraph in enumerate(paragraphs):
    if i:
      lines.append(" .")
    lines.extend(" " + line for line in _wrap(paragraph))
  return "\n".join(lines) + "\n"


def write_raw_fixture(directory: os.PathLike, n_sentences: int = 400,
                      n_descriptions: int = 300, seed: int = 0) -> pathlib.Path:
  """Writes synthetic `de-en`, `Translation-en`, `Translation-de` into `directory`.

  Args:
    directory: created if needed.
    n_sentences: Ding lines that carry one sentence pair each (plus a few
      lines that must be rejected).
    n_descriptions: English descriptions (30..90 words); two thirds get a
      German translation with the same paragraph count.
    seed: RNG seed; equal seeds give byte-identical files.

  Returns:
    the directory.
  """
  rng = random.Random(seed)
  en_lex, de_lex = _Lexicon(rng, _VOWELS_EN), _Lexicon(rng, _VOWELS_DE)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)

  ding = ["# Version :: fixture", "# License :: synthetic test data"]
  for i in range(n_sentences):
    n = rng.randint(4, 12)
    de = de_lex.sentence(n, rng.choice(".?!"))
    en = en_lex.sentence(n, de[-1])
    ding.append(f"{_word(rng, _VOWELS_DE)} {{m}} | {de} :: {_word(rng, _VOWELS_EN)} | {en}")
  ding.append("kurz {adj} :: short")  # a phrase, not a sentence: rejected
  ding.append("eins | zwei drei vier fünf. :: one two three four five.")  # 2 vs 1 parts
  (directory / "de-en").write_text("\n".join(ding) + "\n", encoding="utf-8")

  english, german = [], []
  for i in range(n_descriptions):
    paragraphs = [" ".join(en_lex.sentence(rng.randint(6, 14))
                           for _ in range(rng.randint(1, 3)))
                  for _ in range(rng.randint(1, 3))]
    body = "\n".join(paragraphs)
    md5 = hashlib.md5(body.encode("utf-8")).hexdigest()
    synopsis = en_lex.sentence(rng.randint(3, 7), "").lower()
    english.append(_block(f"pkg{i}", md5, "en", synopsis, paragraphs))
    if i % 3:
      german.append(_block(
          f"pkg{i}", md5, "de", de_lex.sentence(4, ""),
          [de_lex.sentence(len(p.split())) for p in paragraphs]))
  (directory / "Translation-en").write_text("\n".join(english), encoding="utf-8")
  (directory / "Translation-de").write_text("\n".join(german), encoding="utf-8")
  return directory


# ----------------------------------------------------------------------------------------------
# Rows shaped like the prompt tasks' sources (data/prompt_tasks.py), for tests without TFDS.

PROMPT_SOURCES = ("gsm8k", "wmt_t2t_translate", "squad", "web_questions",
                  "natural_questions_open", "trivia_qa", "mbpp")


def prompt_rows(source: str, n: int = 8, seed: int = 0) -> list[dict]:
  """`n` synthetic examples with the fields (and nesting) of a prompt task's source.

  source: one of PROMPT_SOURCES (a TFDS dataset's name, or 'mbpp' for MBPP's JSONL rows).
  Texts are seeded pseudo-words; numbers and answers are consistent within a row (GSM8K's
  short answer is the number after '#### ' in its answer; a SQuAD answer occurs in its
  context), so metrics can be checked on them.
  """
  if source not in PROMPT_SOURCES:
    raise ValueError(f"unknown prompt source {source!r}; sources: {PROMPT_SOURCES}.")
  rng = random.Random(f"{source}/{seed}")
  en, de = _Lexicon(rng, _VOWELS_EN), _Lexicon(rng, _VOWELS_DE)
  rows = []
  for i in range(n):
    question = en.sentence(rng.randint(4, 9), "?")
    answer = en.sentence(rng.randint(1, 3), "").lower()
    if source == "gsm8k":
      a, b = rng.randint(2, 40), rng.randint(2, 40)
      work = f"{en.sentence(6)} {a} + {b} = {a + b}."
      rows.append({"question": question, "answer": f"{work}\n#### {a + b}",
                   "annotation": work, "short_answer": str(a + b)})
    elif source == "wmt_t2t_translate":
      k = rng.randint(4, 12)
      rows.append({"en": en.sentence(k), "de": de.sentence(k)})
    elif source == "squad":
      context = f"{en.sentence(rng.randint(6, 12))} {answer.capitalize()}. {en.sentence(5)}"
      rows.append({"id": f"sq{i}", "title": en.sentence(2, "").title(), "context": context,
                   "question": question,
                   "answers": {"text": [answer, answer], "answer_start": [0, 0]}})
    elif source == "web_questions":
      rows.append({"url": f"http://example.invalid/{i}", "question": question,
                   "answers": [answer, en.sentence(1, "").lower()][:rng.randint(1, 2)]})
    elif source == "natural_questions_open":
      rows.append({"question": question, "answer": [answer]})
    elif source == "trivia_qa":
      rows.append({"question": question,
                   "answer": {"aliases": [answer, answer.title()], "value": answer.title()}})
    else:  # mbpp
      name = _word(rng, _VOWELS_EN)
      # Ids spread over MBPP's four task-id ranges (prompt, test, validation, train).
      rows.append({"task_id": (2, 11, 511, 601)[i % 4] + i // 4,
                   "text": f"Write a function {name} that {answer}.",
                   "code": f"def {name}(x):\n    return x",
                   "test_list": [f"assert {name}({k}) == {k}" for k in range(3)],
                   "test_setup_code": "", "challenge_test_list": []})
  return rows
