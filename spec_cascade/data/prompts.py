"""Prompt templates for decoder-only models, and prompt ↔ ids with a model's tokenizer.

A T5 model reads its task's input through its encoder; a decoder-only model continues a
prompt. The prompt tasks (`prompt_tasks`, the ICLR paper's Gemma experiments) format each
example with a `PromptTemplate`:

    prompt = instruction + shot_1 + separator + ... + shot_k + separator + query(example)
    shot_i = query(shot_i's fields) + answer(shot_i's answer)

and the model's continuation, cut at the first of the template's stop strings, is the
prediction. The paper names the datasets but neither the prompts nor the shots, so every
template here is our choice, and every shot is text written for this project (none is taken
from a dataset, so no evaluation example can leak into a prompt).

Other tasks (the T5 tasks, the offline ones) have no template: a decoder-only model reads their
input text as it is (it carries T5's instruction prefix, "translate English to German: ...").

This module is pure Python (no TensorFlow); `prompt_tasks` builds the same strings in a seqio
pipeline from `PromptTemplate.segments`.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Any, Iterable, Mapping, Sequence

ANSWER = "answer"  # the field of a shot that holds its answer


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """How an example becomes a prompt, and a continuation a prediction.

  query: format string over the example's fields, e.g. "Q: {question}\\nA:".
  answer: format string of a shot's answer after its query (field `answer`).
  instruction: text before the shots.
  shots: few-shot examples, each a mapping of the query's fields plus `answer`.
  separator: text after each shot (between the shots and before the query).
  stop: the continuation ends at the first of these (the model goes on with a next "shot"
    otherwise); the prediction is what precedes it, stripped of surrounding white space.
  """
  query: str
  answer: str = " {answer}"
  instruction: str = ""
  shots: tuple[Mapping[str, str], ...] = ()
  separator: str = "\n\n"
  stop: tuple[str, ...] = ("\n\n",)

  def __post_init__(self):
    fields = set(self.fields)
    if not fields:
      raise ValueError(f"a prompt template's query names no field: {self.query!r}.")
    for i, shot in enumerate(self.shots):
      missing = sorted((fields | {ANSWER}) - set(shot))
      if missing:
        raise ValueError(f"shot {i} of the template with query {self.query!r} lacks the "
                         f"fields {missing}.")
    if any(not s for s in self.stop):
      raise ValueError("a stop string must not be empty.")

  @property
  def fields(self) -> tuple[str, ...]:
    """The example fields the query reads, in order of appearance."""
    return tuple(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(self.query)
                               if name is not None))

  def prefix(self) -> str:
    """Everything before the example's query: the instruction and the rendered shots."""
    shots = "".join(self.query.format(**shot) + self.answer.format(answer=shot[ANSWER])
                    + self.separator for shot in self.shots)
    return self.instruction + shots

  def format(self, **fields: str) -> str:
    """The prompt of one example; KeyError naming a missing field."""
    missing = [f for f in self.fields if f not in fields]
    if missing:
      raise KeyError(f"the example lacks the prompt fields {missing}.")
    return self.prefix() + self.query.format(**fields)

  def segments(self) -> list[tuple[str, str | None]]:
    """The prompt as (literal text, field or None) pieces in order: joining each literal with
    the field's value after it gives `format`'s string (how a tf.data pipeline builds it)."""
    out = []
    first = True
    for literal, name, spec, conversion in string.Formatter().parse(self.query):
      if spec or conversion:
        raise ValueError(f"prompt fields take no format spec or conversion: {self.query!r}.")
      out.append(((self.prefix() if first else "") + literal, name))
      first = False
    return out

  def cut(self, continuation: str) -> str:
    """The prediction in a continuation: the text before the first stop string, stripped."""
    end = min((i for i in (continuation.find(s) for s in self.stop) if i >= 0),
              default=len(continuation))
    return continuation[:end].strip()


# ----------------------------------------------------------------------------------------------
# The templates of the prompt tasks. Shots are ours; see the module docstring.

# Chain-of-thought shots ending in "The answer is N." (what `metrics.final_number` reads).
_MATH_SHOTS = (
    {"question": "A baker makes 24 muffins and packs them in boxes of 6. Each box sells for "
                 "$5. How much money does the baker get for all the muffins?",
     ANSWER: "24 muffins fill 24 / 6 = 4 boxes. 4 boxes sell for 4 * 5 = 20 dollars. "
             "The answer is 20."},
    {"question": "Tom has 3 red pencils and twice as many blue pencils. He gives away 2 blue "
                 "pencils. How many pencils does he have now?",
     ANSWER: "Tom has 3 * 2 = 6 blue pencils. After giving 2 away he has 6 - 2 = 4 blue "
             "pencils. With the red ones he has 3 + 4 = 7 pencils. The answer is 7."},
    {"question": "A train runs at 60 kilometres per hour for 2 hours and then at 45 "
                 "kilometres per hour for 1 hour. How far does it travel?",
     ANSWER: "In the first 2 hours it covers 60 * 2 = 120 kilometres, in the next hour 45 "
             "kilometres, so 120 + 45 = 165 kilometres in all. The answer is 165."},
    {"question": "Maria reads 15 pages a day. Her book has 120 pages and she has read 30 of "
                 "them. How many more days does she need to finish it?",
     ANSWER: "She has 120 - 30 = 90 pages left. At 15 pages a day that takes 90 / 15 = 6 "
             "days. The answer is 6."},
)

_TRANSLATION_SHOTS = (
    {"en": "The weather is nice today.", ANSWER: "Das Wetter ist heute schön."},
    {"en": "Where is the train station?", ANSWER: "Wo ist der Bahnhof?"},
)

_QA_SHOTS = (
    {"question": "What is the capital of France?", ANSWER: "Paris"},
    {"question": "How many legs does a spider have?", ANSWER: "eight"},
    {"question": "Who wrote the play Romeo and Juliet?", ANSWER: "William Shakespeare"},
    {"question": "What is the chemical symbol for gold?", ANSWER: "Au"},
)

_READING_SHOTS = (
    {"title": "Bicycle",
     "context": "A bicycle is a vehicle with two wheels, one behind the other. The rider "
                "turns pedals with the feet to drive it. The first bicycles with pedals were "
                "built in the 1860s.",
     "question": "When were the first bicycles with pedals built?",
     ANSWER: "in the 1860s"},
)

_CODE_SHOTS = (
    {"text": "Write a function to return the sum of the squares of a list of numbers.",
     "tests": "assert sum_of_squares([1, 2, 3]) == 14\nassert sum_of_squares([]) == 0",
     ANSWER: "def sum_of_squares(numbers):\n  return sum(x * x for x in numbers)"},
    {"text": "Write a function to check whether a string reads the same backwards.",
     "tests": "assert is_palindrome(\"level\") == True\n"
              "assert is_palindrome(\"python\") == False",
     ANSWER: "def is_palindrome(text):\n  return text == text[::-1]"},
)

_FENCE = "```"

TEMPLATES: dict[str, PromptTemplate] = {
    # GSM8K: 4-shot chain of thought; the prediction's final number is scored.
    "gsm8k": PromptTemplate(query="Q: {question}\nA:", shots=_MATH_SHOTS),
    # WMT EN→DE: 2-shot, one sentence per line.
    "wmt_ende": PromptTemplate(query="English: {en}\nGerman:",
                               instruction="Translate English to German.\n\n",
                               shots=_TRANSLATION_SHOTS, stop=("\n",)),
    # MBPP: 2-shot; the model writes the function inside a fenced block and stops at its end.
    "mbpp": PromptTemplate(query="Task: {text}\nTests:\n{tests}\nCode:\n" + _FENCE + "python\n",
                           answer="{answer}\n" + _FENCE, shots=_CODE_SHOTS, stop=(_FENCE,)),
    # SQuAD v1.1: 1-shot reading comprehension with the passage in the prompt.
    "squad": PromptTemplate(query="Title: {title}\nBackground: {context}\nQ: {question}\nA:",
                            shots=_READING_SHOTS, stop=("\n",)),
    # Closed-book QA (WebQuestions, Natural Questions open, TriviaQA): 4-shot, short answers.
    "closed_book_qa": PromptTemplate(query="Q: {question}\nA:", shots=_QA_SHOTS,
                                     stop=("\n",)),
}


def template(name: str) -> PromptTemplate:
  """The named template; ValueError listing the names."""
  if name not in TEMPLATES:
    raise ValueError(f"unknown prompt template {name!r}; templates: {sorted(TEMPLATES)}.")
  return TEMPLATES[name]


# ----------------------------------------------------------------------------------------------
# Prompts ↔ ids.

class PromptCodec:
  """A decoder-only model's view of a task's text: prompts in, continuations out.

  `infer.load_task` uses it as the tokenizer of a decoder-only pair's TaskData.

  tokenizer: the model's (`model_tokenizer.ModelTokenizer`: encode / decode / vocab_size /
    bos_id). eos_id: the id that ends the model's generations (its config's: what the engine
    stops at). cut: the task's template whose stop strings end a prediction (None: the whole
    continuation).
  """

  def __init__(self, tokenizer: Any, eos_id: int, cut: PromptTemplate | None = None):
    self.tokenizer = tokenizer
    self.eos_id = int(eos_id)
    self.bos_id = tokenizer.bos_id
    self._template = cut

  @property
  def vocab_size(self) -> int:
    return int(self.tokenizer.vocab_size)

  def encode_prompt(self, text: str) -> list[int]:
    """BOS (when the vocabulary has one), then the text's ids; no EOS (the model continues)."""
    ids = self.tokenizer.encode(text)
    return ([self.bos_id] if self.bos_id is not None else []) + ids

  def cut_prompt(self, ids: Sequence[int], length: int) -> list[int]:
    """A prompt of at most `length` ids: BOS and the last ids kept, the earliest text dropped
    (a few-shot prompt keeps its query, which comes last)."""
    ids = list(ids)
    if len(ids) <= length:
      return ids
    head = ids[:1] if self.bos_id is not None and ids[:1] == [self.bos_id] else []
    return head + ids[len(ids) - (length - len(head)):]

  def decode(self, ids: Iterable[int]) -> str:
    """The prediction in generated ids: up to the first EOS, cut at the template's stop."""
    out = []
    for i in ids:
      if int(i) == self.eos_id:
        break
      out.append(int(i))
    text = self.tokenizer.decode(out)
    return self._template.cut(text) if self._template is not None else text.strip()
