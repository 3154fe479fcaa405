"""Prompt templates, a decoder-only model's tokenizer (SentencePiece and tokenizer.json), the
prompt codec, and the answer metrics of the prompt tasks. No TensorFlow, no models."""
import json

import numpy as np
import pytest

import prompt_helpers
from spec_cascade import metrics
from spec_cascade.data import fixtures, model_tokenizer, prompts


def test_every_template_formats_its_shots_and_joins_segments_like_format():
  for name, t in prompts.TEMPLATES.items():
    fields = {f: f"<{f} of the example>" for f in t.fields}
    text = t.format(**fields)
    assert text.startswith(t.instruction) and text.endswith(t.query.format(**fields))
    for shot in t.shots:  # every shot's answer sits in the prompt right after its query
      assert t.query.format(**shot) + t.answer.format(answer=shot[prompts.ANSWER]) in text
    joined = "".join(lit + (fields[f] if f else "") for lit, f in t.segments())
    assert joined == text, name


def test_template_cut_and_errors():
  t = prompts.PromptTemplate(query="Q: {question}\nA:", stop=("\n", "Q:"))
  assert t.cut(" Paris\nQ: next") == "Paris"
  assert t.cut(" Paris Q: x\n") == "Paris"
  assert t.cut(" no stop here ") == "no stop here"
  with pytest.raises(KeyError, match="question"):
    t.format(title="x")
  with pytest.raises(ValueError, match="lacks the fields"):
    prompts.PromptTemplate(query="Q: {question}\nA:", shots=({"question": "q"},))
  with pytest.raises(ValueError, match="names no field"):
    prompts.PromptTemplate(query="no fields")
  with pytest.raises(ValueError, match="unknown prompt template"):
    prompts.template("nope")


class _Chars:
  """A stand-in tokenizer: one id per character (offset by 10), BOS 2."""
  vocab_size, bos_id = 400, 2

  def encode(self, text):
    return [10 + ord(c) for c in text]

  def decode(self, ids):
    return "".join(chr(i - 10) for i in ids)


def test_codec_prepends_bos_cuts_prompts_from_the_front_and_decodes_to_eos_and_stop():
  t = prompts.PromptTemplate(query="Q: {question}\nA:", stop=("\n",))
  codec = prompts.PromptCodec(_Chars(), eos_id=1, cut=t)
  ids = codec.encode_prompt("abc")
  assert ids == [2, 107, 108, 109] and 1 not in ids
  assert codec.cut_prompt(ids, 3) == [2, 108, 109] and codec.cut_prompt(ids, 9) == ids
  out = _Chars().encode(" yes\nQ: more") + [1] + [0, 0]
  assert codec.decode(out) == "yes"
  assert codec.decode(_Chars().encode(" all of it ")) == "all of it"  # no EOS: every token
  plain = prompts.PromptCodec(_Chars(), eos_id=1)
  assert plain.decode(_Chars().encode(" a\nb") + [1]) == "a\nb"


def test_sentencepiece_model_tokenizer_keeps_text_and_its_special_ids(tmp_path):
  path = prompt_helpers.train_tokenizer(tmp_path / "tokenizer.model")
  tok = model_tokenizer.ModelTokenizer(tmp_path)  # a folder finds its tokenizer.model
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (2, 1, prompt_helpers.PIECES)
  text = prompts.template("gsm8k").format(question="Tom has 3 pens?")
  ids = tok.encode(text)
  assert 2 not in ids and 1 not in ids and tok.decode(ids) == text
  assert tok.decode([2] + ids + [1, 0, 10_000]) == text  # specials and stray ids dropped
  assert model_tokenizer.find_tokenizer(tmp_path) == path
  assert model_tokenizer.find_tokenizer(tmp_path / "nowhere") is None
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    model_tokenizer.ModelTokenizer(tmp_path / "empty_dir_that_is_missing.model")
  (tmp_path / "bad.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    model_tokenizer.ModelTokenizer(tmp_path / "bad.model")


def _word_level_tokenizer_json(directory, config):
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "hello": 4, "world": 5}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  tok.add_special_tokens(["<pad>", "<eos>", "<bos>"])
  directory.mkdir()
  tok.save(str(directory / "tokenizer.json"))
  for name, value in config.items():
    (directory / name).write_text(json.dumps(value))
  return directory


def test_tokenizer_json_takes_bos_from_tokenizer_config_else_config_json(tmp_path):
  a = _word_level_tokenizer_json(tmp_path / "a", {
      "tokenizer_config.json": {"bos_token": {"content": "<bos>"}, "eos_token": "<eos>"}})
  tok = model_tokenizer.ModelTokenizer(a)
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (2, 1, 6)
  assert tok.encode("hello world") == [4, 5] and tok.decode([2, 4, 5, 1]) == "hello world"
  b = _word_level_tokenizer_json(tmp_path / "b", {
      "config.json": {"bos_token_id": 2, "eos_token_id": [1, 5]}})
  assert (model_tokenizer.ModelTokenizer(b).bos_id, model_tokenizer.ModelTokenizer(b).eos_id) == (
      2, 1)
  c = _word_level_tokenizer_json(tmp_path / "c", {  # Qwen2-like: no BOS at all
      "tokenizer_config.json": {"bos_token": None, "eos_token": "<eos>"}})
  assert model_tokenizer.ModelTokenizer(c).bos_id is None
  d = _word_level_tokenizer_json(tmp_path / "d", {
      "tokenizer_config.json": {"bos_token": "<s>"}})
  with pytest.raises(ValueError, match="'<s>'"):
    model_tokenizer.ModelTokenizer(d)


# ----------------------------------------------------------------------------------------------
# Answer metrics.

def test_exact_match_takes_the_best_accepted_answer_after_normalising():
  sep = metrics.ANSWER_SEPARATOR
  targets = [f"Paris{sep}City of Light", "the Beatles", "eight", "42"]
  preds = ["city of light!", "Beatles", "8", "42 apples"]
  s = metrics.exact_match(targets, preds)
  assert s["exact_match"] == pytest.approx(50.0)
  assert s["f1"] == pytest.approx((100 + 100 + 0 + 100 * 2 / 3) / 4)  # "8" ≠ "eight"
  assert metrics.scores(targets, preds, "f1") == s
  stats = metrics.example_stats(targets, preds, "exact_match")
  assert stats[:, 0].tolist() == [100.0, 100.0, 0.0, 0.0]
  assert metrics.corpus_scores(stats, np.ones((1, 4)), "exact_match")[0] == pytest.approx(50.0)


def test_accuracy_reads_the_final_number():
  assert metrics.final_number("3 + 4 = 7. The answer is 1,234.") == 1234.0
  assert metrics.final_number("so 12 then 15") == 15.0
  assert metrics.final_number("The answer is 5. Q: next? The answer is 9.") == 5.0
  assert metrics.final_number("no digits") is None
  rows = fixtures.prompt_rows("gsm8k", 4)
  targets = [r["short_answer"] for r in rows]
  preds = [f"{r['annotation']} The answer is {r['short_answer']}." for r in rows]
  preds[0] = "The answer is -1."
  assert metrics.accuracy(targets, preds) == {"accuracy": 75.0}
  assert metrics.example_stats(targets, preds, "accuracy")[:, 0].tolist() == [0, 100, 100, 100]


def test_prompt_task_families_have_metrics():
  for task, metric in (("gsm8k_prompt", "accuracy"), ("wmt_ende_prompt", "bleu"),
                       ("mbpp_prompt", "bleu"), ("squad_prompt", "exact_match"),
                       ("web_questions_prompt", "exact_match"),
                       ("natural_questions_prompt", "exact_match"),
                       ("trivia_qa_prompt", "exact_match")):
    assert metrics.primary_metric(task) == metric
    assert metrics.stat_fields(metric)
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.scores(["a"], ["a"], "nope")
