"""The prompt tasks (seqio, ICLR Gemma experiments) on fixture rows shaped like their sources:
each task's prompt is its template's, built in the tf.data pipeline (imports TensorFlow)."""
import json

import gin
import pytest

seqio = pytest.importorskip("seqio")

from spec_cascade import infer, metrics  # pylint: disable=g-import-not-at-top
from spec_cascade.data import eval_data, fixtures, prompt_tasks, prompts

SEP = metrics.ANSWER_SEPARATOR
# PROMPT_TASKS entry → (fixture source, row → (template fields, target)), written out here
# independently of the task code.
EXPECTED = {
    "gsm8k_prompt": ("gsm8k", lambda r: ({"question": r["question"]}, r["short_answer"])),
    "wmt_ende_prompt": ("wmt_t2t_translate", lambda r: ({"en": r["en"]}, r["de"])),
    "squad_prompt": ("squad", lambda r: (
        {"title": r["title"], "context": r["context"], "question": r["question"]},
        SEP.join(r["answers"]["text"]))),
    "web_questions_prompt": ("web_questions",
                             lambda r: ({"question": r["question"]}, SEP.join(r["answers"]))),
    "natural_questions_prompt": ("natural_questions_open",
                                 lambda r: ({"question": r["question"]}, SEP.join(r["answer"]))),
    "trivia_qa_prompt": ("trivia_qa", lambda r: ({"question": r["question"]},
                                                 SEP.join(r["answer"]["aliases"]))),
}


def _examples(task, split):
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  return [{k: v.decode() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_prompt_tasks_are_registered_as_text_tasks_with_their_metric():
  prompt_tasks.register_prompt_tasks()  # again: safe, needs no data
  for name, spec in prompt_tasks.PROMPT_TASKS.items():
    task = seqio.get_mixture_or_task(name)
    assert eval_data._is_text_task(task)  # pylint: disable=protected-access
    assert task.metric_fns == [metrics.metric_for_task(name)]
    assert prompt_tasks.template_of(name) is prompts.template(spec.template)
    assert set(task.source.splits) == set(spec.splits)
  assert prompt_tasks.template_of("wmt_t2t_ende_v003") is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_prompt_task_formats_its_source_rows_with_its_template(name):
  source, expected = EXPECTED[name]
  rows = fixtures.prompt_rows(source, 5)
  spec = prompt_tasks.PROMPT_TASKS[name]
  task = prompt_tasks.add_prompt_task(name.replace("_prompt", "_fixture"), spec,
                                      prompt_tasks.rows_source({"validation": rows}))
  template = prompts.template(spec.template)
  got = _examples(task, "validation")
  assert len(got) == len(rows)
  for ex, row in zip(got, rows):
    fields, target = expected(row)
    assert ex["inputs"] == template.format(**fields)
    assert ex["targets"] == target


def test_mbpp_reads_its_jsonl_split_by_task_id(tmp_path):
  rows = fixtures.prompt_rows("mbpp", 12)
  path = tmp_path / "mbpp.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  task = seqio.get_mixture_or_task("mbpp_prompt")
  template = prompts.template("mbpp")
  with gin.unlock_config():
    gin.bind_parameter("mbpp_jsonl_path.path", str(path))
  try:
    for split, (lo, hi) in prompt_tasks.MBPP_SPLITS.items():
      want = [r for r in rows if lo <= r["task_id"] <= hi]
      got = _examples(task, split)
      assert len(got) == len(want) == 3
      for ex, row in zip(got, want):
        assert ex["inputs"] == template.format(text=row["text"],
                                               tests="\n".join(row["test_list"]))
        assert ex["targets"] == row["code"]
  finally:
    gin.clear_config()
  with pytest.raises(FileNotFoundError, match="mbpp_jsonl_path"):
    _examples(task, "test")


def test_missing_tfds_data_says_how_to_prepare_it(tmp_path):
  from spec_cascade.data import tasks
  tasks.set_tfds_data_dir(tmp_path)
  try:
    with pytest.raises(FileNotFoundError, match="download_and_prepare") as info:
      _examples(seqio.get_mixture_or_task("gsm8k_prompt"), "test")
    assert "gsm8k:1.0.0" in str(info.value) and str(tmp_path) in str(info.value)
  finally:
    tasks.set_tfds_data_dir(None)


def test_a_t5_pair_cannot_read_a_text_task():
  rows = fixtures.prompt_rows("trivia_qa", 3)
  prompt_tasks.add_prompt_task("trivia_qa_fixture", prompt_tasks.PROMPT_TASKS["trivia_qa_prompt"],
                               prompt_tasks.rows_source({"validation": rows}))
  with pytest.raises(ValueError, match="text prompts for decoder-only models"):
    infer.load_task("trivia_qa_fixture", "validation")
  with pytest.raises(ValueError, match="no known task family"):
    prompt_tasks.add_prompt_task("my_fixture", prompt_tasks.PROMPT_TASKS["trivia_qa_prompt"])
