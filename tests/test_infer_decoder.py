"""infer and sweep on a decoder-only pair: checkpoints in our format and as a Hugging Face
folder, prompts (template, BOS, the model's tokenizer), predictions as continuations, and greedy
SpecDecode equal to the greedy verifier end to end. The pair is small and random
(`prompt_helpers`); the tasks are prompt tasks served from fixture rows."""
import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("seqio")

import prompt_helpers  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sweep_helpers
from spec_cascade import decoding, infer, sweep
from spec_cascade.data import prompt_tasks, prompts
from spec_cascade.models import NAMED_CONFIGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "trivia_qa_fixture"


@pytest.fixture(scope="module")
def denv(tmp_path_factory):
  prompt_helpers.register_fixture_tasks()
  return prompt_helpers.decoder_env(tmp_path_factory.getbasetemp() / "decoder_env")


@pytest.fixture(scope="module")
def pair(denv):
  return infer.load_models(str(denv.drafter), str(denv.verifier),
                           [infer.resolve_method("specdecode")])


def test_load_models_reads_our_decoder_checkpoint_and_a_hf_folder(denv, pair):
  drafter, verifier = pair
  ref = prompt_helpers.decoder_pair()
  for got, want in zip(pair, ref):
    assert decoding.contract.is_decoder_only(got.model)
    assert got.model.config == want.model.config
    for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(want.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert infer.checkpoint_vocabulary(str(denv.drafter)) == str(denv.drafter / "tokenizer.model")
  assert infer.checkpoint_vocabulary(str(denv.verifier)) == str(denv.verifier / "tokenizer.model")
  # A config given for a checkpoint is checked against it and replaces it (run-time fields).
  b = infer.load_bundle(str(denv.verifier), verifier.model.config.replace(dtype="bfloat16"))
  assert b.model.config.dtype == "bfloat16"
  with pytest.raises(ValueError, match="num_layers: checkpoint 3 vs given 2"):
    infer.load_bundle(str(denv.verifier), drafter.model.config)
  with pytest.raises(ValueError, match="T5Config"):
    infer.load_bundle(str(denv.drafter), NAMED_CONFIGS["tiny"])
  other = decoding.Bundle(type(drafter.model)(drafter.model.config.replace(eos_id=7)), None)
  with pytest.raises(ValueError, match="different EOS ids"):
    infer.check_pair(other, verifier)


def test_load_task_makes_prompts_bos_first_no_eos_cut_from_the_front(denv, pair):
  vocab = infer.checkpoint_vocabulary(str(denv.verifier))
  data = infer.load_task(TASK, "validation", None, 0, vocab, pair=pair)
  codec = data.tokenizer
  template = prompt_tasks.template_of(TASK)
  assert isinstance(codec, prompts.PromptCodec) and codec.eos_id == 1 and codec.bos_id == 2
  for ex in data.examples:
    ids = list(ex.input_ids)
    assert ids[0] == 2 and 1 not in ids and 0 not in ids
    assert ex.inputs == template.format(question=ex.inputs.rsplit("Q: ", 1)[1][:-len("\nA:")])
    assert codec.tokenizer.decode(ids) == ex.inputs
  cut = infer.load_task(TASK, "validation", None, 0, vocab, input_length=40, pair=pair)
  assert cut.truncated == len(cut.examples) and cut.input_length == 40
  for short, full in zip(cut.examples, data.examples):
    assert len(short.input_ids) == 40 and short.input_ids[0] == 2
    assert short.input_ids[1:] == full.input_ids[-39:]  # the query (at the end) is kept
  with pytest.raises(ValueError, match="set vocabulary_path"):
    infer.load_task(TASK, "validation", None, 0, None, pair=pair)


def test_an_offline_task_is_read_as_it_is_by_a_decoder_only_pair(denv, pair, tmp_path_factory,
                                                                 monkeypatch):
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", False)
  sweep_helpers.use_env(monkeypatch, env)
  data = infer.load_task("debian_ende", "validation", 4, 0, str(denv.tokenizer), pair=pair)
  tok = data.tokenizer.tokenizer
  for ex in data.examples:  # the T5-style input, verbatim, is the prompt
    assert ex.inputs.startswith("translate English to German: ")
    assert list(ex.input_ids) == [2] + tok.encode(ex.inputs)
  assert data.tokenizer.decode(tok.encode(" Kiti bibe.") + [1, 5]) == "Kiti bibe."


def _infer_flags(out, denv, *extra):
  return ["--gin_file=configs/runs/infer.gin",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
          f"--gin.DRAFTER_CHECKPOINT_PATH='{denv.drafter}'",
          f"--gin.VERIFIER_CHECKPOINT_PATH='{denv.verifier}'",
          "--gin.BATCH_SIZE=3", "--gin.TEMPERATURE=0.0",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': None, 'targets': 12}",
          "--gin.infer_script.infer.progress=False", *extra]


def _records(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_infer_greedy_specdecode_on_a_decoder_pair_equals_the_verifier(denv, tmp_path,
                                                                       monkeypatch):
  monkeypatch.chdir(REPO)
  runs = {}
  for name, extra in (("verifier", ["--gin.METHOD='verifier'"]),
                      ("specdecode", ["--gin.METHOD='specdecode'", "--gin.NUM_DRAFT_TOKENS=3"])):
    assert infer.main(_infer_flags(tmp_path / name, denv, *extra)) == 0
    runs[name] = (json.loads((tmp_path / name / "metrics.json").read_text()),
                  _records(tmp_path / name / "predictions.jsonl"))
  (mv, rv), (ms, rs) = runs["verifier"], runs["specdecode"]
  assert [r["prediction"] for r in rs] == [r["prediction"] for r in rv]
  assert any(r["prediction"] for r in rv)  # continuations, not empty strings
  assert mv["metric"] == ms["metric"] == "exact_match" and ms["quality"] == mv["quality"]
  assert ms["counters"]["drafted"] > 0 and ms["counters"]["accepted"] > 0
  assert ms["counters"]["output_tokens"] == mv["counters"]["output_tokens"]
  assert all(r["input"].endswith("\nA:") and "\n" not in r["prediction"] for r in rs)


@pytest.mark.slow
def test_tiny_sweep_on_a_decoder_pair(denv, tmp_path):
  out = tmp_path / "sweep"
  drafter_config = prompt_helpers.decoder_pair()[0].model.config
  rows = sweep.run_sweep(
      TASK, str(out), str(denv.drafter), str(denv.verifier),
      methods=["verifier", "specdecode", "spec_cascade_token_v3"],
      alphas={"token_v3": [0.5]}, temperatures=[0.0], num_draft_tokens=[2], batch_size=3,
      max_decode_length=10, cost_ratio_reps=2, write_report=False, progress=False,
      drafter_config=drafter_config)
  by = {r.method: r for r in rows}
  assert set(by) == {"verifier", "specdecode", "spec_cascade_token_v3"}
  assert by["specdecode"].quality == by["verifier"].quality
  assert by["specdecode"].metric == "exact_match" and by["specdecode"].rejection_rate >= 0
  assert np.isfinite(by["specdecode"].modelled_rel_latency)
  preds = {}
  for method, gamma in (("verifier", None), ("specdecode", 2)):
    point = sweep.Point(TASK, infer.resolve_method(method), None, 0.0, gamma)
    preds[method] = [r["prediction"] for r in
                     _records(out / "predictions" / TASK / f"{point.name}.jsonl")]
  assert preds["specdecode"] == preds["verifier"]
  assert json.loads((out / sweep.COST_RATIO_FILE).read_text())[TASK]["c"] > 0


# ----------------------------------------------------------------------------------------------
# The shipped Gemma paper configs.

GEMMA_TASKS = ("gsm8k", "wmt_ende", "mbpp", "squad", "web_questions", "natural_questions",
               "trivia_qa")


def _parse(*files):
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  for p in (REPO, os.path.join(REPO, "configs")):
    gin.add_config_file_search_path(p)
  gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files], [],
                                     finalize_config=False)
  bindings = gin.config._CONFIG.items()  # pylint: disable=protected-access
  sweep_args = next(v for (_, sel), v in bindings if sel.endswith("run_sweep"))
  return gin.query_parameter, {k: sweep_args[k].scoped_configurable_fn()
                               for k in ("drafter_config", "verifier_config")}


@pytest.mark.parametrize("task", GEMMA_TASKS)
def test_gemma_paper_gins_run_gemma2_2b_to_27b_with_gamma_1(task):
  import gin  # pylint: disable=g-import-not-at-top
  from spec_cascade.models import NAMED_DECODER_CONFIGS  # pylint: disable=g-import-not-at-top
  try:
    q, configs = _parse(f"configs/paper/gemma_{task}.gin")
    assert q("%MIXTURE_OR_TASK_NAME") in prompt_tasks.PROMPT_TASKS
    assert q("%SPLIT") in prompt_tasks.PROMPT_TASKS[q("%MIXTURE_OR_TASK_NAME")].splits
    assert (q("%NUM_DRAFT_TOKENS"), q("%TEMPERATURES"), q("%METHODS")) == ([1], [1.0], "all")
    assert configs["drafter_config"] == NAMED_DECODER_CONFIGS["gemma2_2b"]
    assert configs["verifier_config"].replace(dtype="float32") == (
        NAMED_DECODER_CONFIGS["gemma2_27b"])
    for m in infer.ALL_METHODS:  # every rule has a valid α grid
      sweep.alpha_grid(infer.resolve_method(m), q("%ALPHAS"))
    _, configs = _parse(f"configs/paper/gemma_{task}.gin", "configs/paper/gemma_colab_9b.gin")
    assert configs["verifier_config"].replace(dtype="float32") == (
        NAMED_DECODER_CONFIGS["gemma2_9b"])
  finally:
    gin.clear_config()
