"""A hermetic decoder-only setting for infer/sweep tests.

`decoder_env(root)` builds (once per test session and root):
* a Gemma-style SentencePiece tokenizer (pad 0, EOS 1, BOS 2, unk 3; newlines kept) trained on
  the prompt templates and `fixtures.prompt_rows` text;
* a small random Gemma-family pair (`pairs.make_decoder_pair`, vocabulary = the tokenizer's),
  the drafter saved as our decoder-only checkpoint and the verifier as a Hugging Face folder,
  each with its tokenizer.model, so infer reads both formats.
`register_fixture_tasks()` registers prompt tasks served from fixture rows (needs seqio).
"""
import dataclasses
import io
import pathlib
import shutil

import sentencepiece as spm

from pairs import make_decoder_pair
from spec_cascade import hf_decoder
from spec_cascade.data import fixtures, prompts

PIECES = 256
TOKENIZER = "tokenizer.model"
# Fixture prompt tasks: name → (PROMPT_TASKS entry, fixture source). Each name starts like the
# task it stands for, so it gets that task's metric.
FIXTURE_TASKS = {
    "trivia_qa_fixture": ("trivia_qa_prompt", "trivia_qa"),
    "gsm8k_fixture": ("gsm8k_prompt", "gsm8k"),
    "squad_fixture": ("squad_prompt", "squad"),
}
_BUILT = {}
_PAIR = []


@dataclasses.dataclass(frozen=True)
class DecoderEnv:
  tokenizer: pathlib.Path
  drafter: pathlib.Path   # our checkpoint format (params/ + spec_cascade_checkpoint.json)
  verifier: pathlib.Path  # a Hugging Face folder (config.json + model.safetensors)


def train_tokenizer(path: pathlib.Path) -> pathlib.Path:
  """A PIECES-piece SentencePiece model with Gemma's special ids, text kept byte for byte."""
  texts = [prompts.template(name).prefix() for name in prompts.TEMPLATES]
  for source in fixtures.PROMPT_SOURCES:
    for row in fixtures.prompt_rows(source, 40):
      texts.extend(v for v in row.values() if isinstance(v, str))
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer, vocab_size=PIECES,
      model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0,
      num_threads=1, minloglevel=2, input_sentence_size=0, shuffle_input_sentence=False,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      user_defined_symbols=["\n"])
  path.write_bytes(buffer.getvalue())
  return path


def decoder_pair():
  """The random (drafter, verifier) Bundles, made once per session."""
  if not _PAIR:
    # Seed and EOS gain chosen so greedy continuations of the fixture prompts are non-empty,
    # differ between rows and mostly end at EOS within a dozen tokens.
    _PAIR.append(make_decoder_pair(vocab=PIECES, emb=32, family="gemma", eos_id=1, seed=2,
                                   eos_gain=1.3))
  return _PAIR[0]


def decoder_env(root: pathlib.Path) -> DecoderEnv:
  key = str(root)
  if key in _BUILT:
    return _BUILT[key]
  root.mkdir(parents=True, exist_ok=True)
  tokenizer = train_tokenizer(root / TOKENIZER)
  drafter, verifier = decoder_pair()
  d_dir, v_dir = root / "drafter", root / "verifier_hf"
  d_dir.mkdir()
  shutil.copyfile(tokenizer, d_dir / TOKENIZER)
  hf_decoder.save_decoder_checkpoint(str(d_dir), drafter.params, drafter.model.config,
                                     vocabulary_path=TOKENIZER)
  hf_decoder.export_hf_decoder(verifier.params, verifier.model.config, str(v_dir))
  shutil.copyfile(tokenizer, v_dir / TOKENIZER)
  _BUILT[key] = DecoderEnv(tokenizer, d_dir, v_dir)
  return _BUILT[key]


def register_fixture_tasks(n: int = 6) -> None:
  """Registers FIXTURE_TASKS with `n` fixture rows in each split (imports seqio)."""
  from spec_cascade.data import prompt_tasks  # pylint: disable=g-import-not-at-top
  for name, (task, source) in FIXTURE_TASKS.items():
    rows = fixtures.prompt_rows(source, n)
    prompt_tasks.add_prompt_task(name, prompt_tasks.PROMPT_TASKS[task],
                                 prompt_tasks.rows_source({"validation": rows, "test": rows}))
