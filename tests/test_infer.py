"""spec_cascade.infer (one point: predictions + metrics), its data/batching helpers, the offline
pair loader (spec_cascade.pretrained) and the shipped gin configs."""
import glob
import json
import math
import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from device_env import cpu_devices_env
import sweep_helpers
from spec_cascade import decoding, gin_cli, infer, metrics, pod, pretrained
from spec_cascade.data import eval_data
from spec_cascade.models import NAMED_CONFIGS, cpu_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "debian_ende"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The synthetic corpora (the pair is saved only by the tests that need it: `pair_env`)."""
  return sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", False)


@pytest.fixture
def pair_env(tmp_path_factory):
  return sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)


@pytest.fixture(autouse=True)
def _env_vars(monkeypatch, env):
  sweep_helpers.use_env(monkeypatch, env)


# ----------------------------------------------------------------------------------------------
# Data and batches.

def test_load_task_picks_a_fixed_random_subset_and_counts_truncation(env):
  full = infer.load_task(TASK, "validation", None, 0, str(env.vocab))
  n = len(full.examples)
  assert n == full.split_size and n > 12
  assert full.truncated == 0 and full.input_length % 32 == 0
  assert full.input_length >= full.longest_input > full.input_length - 32
  a = infer.load_task(TASK, "validation", 12, 3, str(env.vocab))
  b = infer.load_task(TASK, "validation", 12, 3, str(env.vocab))
  c = infer.load_task(TASK, "validation", 12, 4, str(env.vocab))
  idx = [e.index for e in a.examples]
  assert idx == [e.index for e in b.examples] == sorted(idx) and len(set(idx)) == 12
  assert idx != [e.index for e in c.examples]
  for e in a.examples:
    assert e.input_ids[-1] == 1 and 1 not in e.input_ids[:-1]
    assert e.inputs.startswith("translate English to German: ")
  cut = infer.load_task(TASK, "validation", None, 0, str(env.vocab), input_length=16)
  long = sum(len(e.input_ids) > 16 for e in full.examples)
  assert cut.truncated == long > 0 and cut.input_length == 16
  for e, f in zip(cut.examples, full.examples):
    assert len(e.input_ids) <= 16 and e.input_ids[-1] == 1
    assert e.input_ids[:-1] == f.input_ids[:len(e.input_ids) - 1]
  with pytest.raises(ValueError, match="num_examples"):
    infer.load_task(TASK, "validation", 0, 0, str(env.vocab))


def test_batches_are_length_sorted_fixed_shape_and_cover_every_example_once(env):
  data = infer.load_task(TASK, "validation", 11, 0, str(env.vocab))
  batches = infer.make_batches(data, 4)
  assert [b.num_real for b in batches] == [4, 4, 3]
  assert {b.inputs.shape for b in batches} == {(4, data.input_length)}
  seen = np.concatenate([b.positions for b in batches])
  assert sorted(seen.tolist()) == list(range(11))
  lengths = [len(data.examples[p].input_ids) for p in seen]
  assert lengths == sorted(lengths)
  for b in batches:
    for r, p in enumerate(b.positions):
      ex = data.examples[p]
      assert b.inputs[r, :len(ex.input_ids)].tolist() == list(ex.input_ids)
      assert not b.inputs[r, len(ex.input_ids):].any()
      assert b.example_ids[r] == ex.index
  last = batches[-1]  # filled up with copies of its last row
  assert (last.inputs[3] == last.inputs[2]).all() and last.example_ids[3] == last.example_ids[2]
  bucketed = infer.make_batches(data, 4, input_bucket=8)
  for b in bucketed:
    longest = max(len(data.examples[p].input_ids) for p in b.positions)
    assert b.inputs.shape[1] == min(data.input_length, -(-longest // 8) * 8)
  with pytest.raises(ValueError, match="batch_size"):
    infer.make_batches(data, 0)


def test_stream_batches_group_consecutive_batches(env):
  data = infer.load_task(TASK, "validation", 11, 0, str(env.vocab))
  plain = infer.make_batches(data, 4)
  streams = infer.make_batches(data, 4, stream_batches=2)
  assert [b.inputs.shape[0] for b in streams] == [8, 4] and [b.num_real for b in streams] == [8, 3]
  np.testing.assert_array_equal(np.concatenate([b.positions for b in streams]),
                                np.concatenate([b.positions for b in plain]))
  np.testing.assert_array_equal(streams[0].inputs, np.concatenate([plain[0].inputs,
                                                                   plain[1].inputs]))
  with pytest.raises(ValueError, match="stream_batches"):
    infer.make_batches(data, 4, stream_batches=0)


def test_rates_follow_the_paper_definitions():
  tot = {"output_tokens": 40, "drafted": 30, "accepted": 24, "rejected": 5, "deferred": 10.0,
         "verifier_calls": 8, "drafter_steps": 36}
  r = infer.rates(tot, infer.resolve_method("spec_cascade_chow"))
  assert r == {"acceptance_rate": 0.8, "rejection_rate": 5 / 40, "deferral_rate": 0.25,
               "tokens_per_verifier_call": 5.0}
  assert infer.rates(tot, infer.resolve_method("verifier"))["deferral_rate"] == 1.0
  r = infer.rates({**tot, "drafted": 0, "verifier_calls": 0}, infer.resolve_method("drafter"))
  assert r["deferral_rate"] == 0.0
  assert math.isnan(r["acceptance_rate"]) and math.isnan(r["tokens_per_verifier_call"])


def test_engine_config_shares_programs_across_alpha_and_temperature():
  s = infer.DecodeSettings(max_decode_length=12)
  chow = infer.resolve_method("spec_cascade_chow")
  k = infer.engine_config(chow, s, 0.3, 0.5, 4)
  assert (k.method, k.rule, k.alpha, k.num_draft_tokens) == ("spec_cascade", "chow", 0.3, 4)
  assert k.trim_padding is False  # batches padded to input_length share one program per shape
  key = lambda m, a, t, g: infer.engine_config(m, s, a, t, g).program_key((2, 8))
  assert key(chow, 0.3, 0.5, 4) == key(chow, 0.7, 1.0, 4) != key(chow, 0.3, 0.5, 5)
  drafter = infer.resolve_method("drafter")
  assert key(drafter, None, 1.0, 3) == key(drafter, None, 1.0, 7)
  assert k.program_key((2, 8))[0] == k.spec and k.spec.num_draft_tokens == 4
  bild = infer.engine_config(infer.resolve_method("bild"), s, 2.5, 1.0, 4)
  assert bild.rollback_threshold == 2.5 and bild.bild_max_window == 4
  # α is validated once, when the point's config is made.
  with pytest.raises(ValueError, match="alpha"):
    infer.engine_config(chow, s, 1.5, 1.0, 4)


# ----------------------------------------------------------------------------------------------
# Models and the offline pair.

def test_missing_offline_pair_says_how_to_make_it(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.ENV_PAIR, str(tmp_path / "nowhere"))
  with pytest.raises(pretrained.MissingPairError, match="train_offline_pair.sh"):
    pretrained.load_offline_pair()
  with pytest.raises(FileNotFoundError, match="nowhere"):
    pretrained.offline_verifier_path()
  monkeypatch.delenv(pretrained.ENV_PAIR)
  assert pretrained.offline_pair_dir() == pretrained.ASSETS_PAIR


@pytest.mark.slow
def test_load_offline_pair_and_bench_inputs(pair_env):
  drafter, verifier, tok = pretrained.load_offline_pair()
  d_ref, v_ref = sweep_helpers.test_pair()
  assert drafter.model.config == d_ref.model.config
  assert verifier.model.config == v_ref.model.config
  # The pair is shipped as bfloat16 and loaded back as float32 (dense kernels also keep a
  # bfloat16 twin where the few-row kernel runs: tests/test_streamed_weights.py).
  for a, b in zip(jax.tree_util.tree_leaves(cpu_kernels.unstreamed(verifier.params)),
                  jax.tree_util.tree_leaves(v_ref.params)):
    assert np.asarray(a).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(a),
                                  np.asarray(jnp.asarray(b, jnp.bfloat16), np.float32))
  assert tok.vocab_size == sweep_helpers.PIECES + 100
  d, v, make_inputs = pretrained.offline_pair_for_bench()
  x = make_inputs(3)
  assert x.dtype == np.int32 and x.shape[0] == 3
  assert ((x == 1).sum(axis=1) == 1).all()  # one EOS per row
  assert make_inputs(2, length=5).shape == (2, 5)


@pytest.mark.slow
def test_load_bundle_reads_a_trainer_export(tmp_path):
  from spec_cascade import train
  drafter, _ = sweep_helpers.test_pair()
  train.export_params(tmp_path / "model" / "export", drafter.params, drafter.model.config)
  b = infer.load_bundle(str(tmp_path / "model"), activation_dtype="float32")
  assert b.model.config == drafter.model.config
  for x, y in zip(jax.tree_util.tree_leaves(b.params), jax.tree_util.tree_leaves(drafter.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  b16 = infer.load_bundle(str(tmp_path / "model"), dtype="bfloat16", matmul_dtype="bfloat16")
  assert b16.model.config == drafter.model.config.replace(matmul_dtype="bfloat16")
  assert {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(b16.params)} == {
      np.dtype(jnp.bfloat16)}


def test_tokenizer_larger_than_the_models_vocab_is_refused(env):
  from spec_cascade.models import T5Model
  cfg = NAMED_CONFIGS["tiny"].replace(vocab_size=256)  # no parameters needed for the check
  small = decoding.Bundle(T5Model(cfg), None)
  with pytest.raises(ValueError, match="300 ids but the drafter only 256"):
    infer.check_pair(small, small, infer.offline_tokenizer(str(env.vocab)))


# ----------------------------------------------------------------------------------------------
# The entry point.

def _infer_flags(out, *extra, pair=True):
  d = pretrained.offline_drafter_path() if pair else "/nonexistent/drafter"
  v = pretrained.offline_verifier_path() if pair else "/nonexistent/verifier"
  return ["--gin_file=configs/runs/infer.gin",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
          f"--gin.DRAFTER_CHECKPOINT_PATH='{d}'", f"--gin.VERIFIER_CHECKPOINT_PATH='{v}'",
          "--gin.NUM_EXAMPLES=6", "--gin.BATCH_SIZE=4",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': None, 'targets': 8}",
          "--gin.infer_script.infer.progress=False", *extra]


@pytest.mark.slow
def test_infer_writes_predictions_and_metrics(pair_env, tmp_path, capsys):
  out = tmp_path / "out"
  assert infer.main(_infer_flags(out, "--gin.METHOD='spec_cascade_chow'", "--gin.ALPHA=0.4",
                                 "--gin.TEMPERATURE=0.0", "--gin.NUM_DRAFT_TOKENS=3")) == 0
  assert "spec_cascade_chow on debian_ende: bleu" in capsys.readouterr().out
  m = json.loads((out / "metrics.json").read_text())
  with open(out / "predictions.jsonl", encoding="utf-8") as f:
    recs = [json.loads(line) for line in f]
  assert len(recs) == m["num_examples"] == 6
  assert m["method"] == "spec_cascade_chow" and m["alpha"] == 0.4 and m["num_draft_tokens"] == 3
  assert m["quality"] == metrics.bleu([r["target"] for r in recs],
                                      [r["prediction"] for r in recs])["bleu"]
  for f in decoding.COUNTER_FIELDS:
    assert m["counters"][f] == pytest.approx(sum(r["counters"][f] for r in recs))
  assert all(r["counters"]["output_tokens"] <= 8 for r in recs)
  assert m["counters"]["drafted"] > 0 and 0 <= m["acceptance_rate"] <= 1
  assert m["wallclock_s"] > 0 and m["compile_s"] >= 0 and m["truncated_inputs"] == 0
  assert "infer_script.infer" in (out / "config.gin").read_text()


@pytest.mark.slow
def test_infer_auto_num_draft_tokens_matches_the_greedy_verifier(pair_env, tmp_path):
  """NUM_DRAFT_TOKENS='auto': SpecDecode picks its γ (or the verifier alone) on the first
  batch; greedy outputs are the verifier's whatever it picks."""
  runs = {}
  for name, extra in (("v", ["--gin.METHOD='verifier'"]),
                      ("auto", ["--gin.METHOD='specdecode'", "--gin.NUM_DRAFT_TOKENS='auto'"])):
    out = tmp_path / name
    assert infer.main(_infer_flags(out, "--gin.TEMPERATURE=0.0", *extra)) == 0
    runs[name] = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.jsonl", encoding="utf-8") as f:
      runs[name]["preds"] = [json.loads(line)["prediction"] for line in f]
  auto = runs["auto"]
  assert auto["num_draft_tokens"] == "auto" and auto["preds"] == runs["v"]["preds"]
  assert len(auto["chosen_num_draft_tokens"]) >= 1
  assert set(auto["chosen_num_draft_tokens"]) <= {0, 1, 2, 3, 5}
  assert infer.main(_infer_flags(tmp_path / "bad", "--gin.METHOD='bild'", "--gin.ALPHA=2.0",
                                 "--gin.NUM_DRAFT_TOKENS='auto'")) == 2


@pytest.mark.slow
def test_infer_with_the_verifier_alone_needs_no_drafter(pair_env, tmp_path):
  out = tmp_path / "v"
  flags = [f for f in _infer_flags(out) if "DRAFTER_CHECKPOINT_PATH" not in f]
  assert infer.main(flags + ["--gin.METHOD='verifier'", "--gin.TEMPERATURE=0.0"]) == 0
  m = json.loads((out / "metrics.json").read_text())
  assert m["alpha"] is None and m["deferral_rate"] == 1.0 and m["counters"]["drafter_steps"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spec_cascade_token_v3", "seq_cascade"])
def test_infer_streaming_gives_the_same_predictions(pair_env, tmp_path, method):
  """stream_batches=2: 6 examples through 2 rows at a time (continuous batching) — the same
  predictions and counters as plain batches of 2."""
  runs = {}
  for k in (1, 2):
    out = tmp_path / f"s{k}"
    assert infer.main(_infer_flags(out, f"--gin.METHOD='{method}'", "--gin.ALPHA=0.3",
                                   "--gin.TEMPERATURE=1.0", "--gin.NUM_DRAFT_TOKENS=3",
                                   "--gin.BATCH_SIZE=2",
                                   f"--gin.infer_script.infer.stream_batches={k}")) == 0
    with open(out / "predictions.jsonl", encoding="utf-8") as f:
      runs[k] = [json.loads(line) for line in f]
  assert [r["prediction"] for r in runs[1]] == [r["prediction"] for r in runs[2]]
  assert [r["counters"] for r in runs[1]] == [r["counters"] for r in runs[2]]


@pytest.mark.slow
def test_infer_streams_on_a_two_device_mesh(pair_env, tmp_path):
  """Two CPU devices (a data-parallel mesh: each streams its share of every call's examples
  through one slot): the same predictions and counters as one device in plain batches."""
  flags = lambda out, k: _infer_flags(
      out, "--gin.METHOD='spec_cascade_token_v3'", "--gin.ALPHA=0.3", "--gin.TEMPERATURE=1.0",
      "--gin.NUM_DRAFT_TOKENS=3", "--gin.BATCH_SIZE=2", f"--gin.infer_script.infer.stream_batches={k}")
  assert infer.main(flags(tmp_path / "one", 1)) == 0
  env = cpu_devices_env(2)
  res = subprocess.run([sys.executable, "-m", "spec_cascade.infer", *flags(tmp_path / "two", 3)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  runs = {}
  for name in ("one", "two"):
    with open(tmp_path / name / "predictions.jsonl", encoding="utf-8") as f:
      runs[name] = [json.loads(line) for line in f]
  assert [r["prediction"] for r in runs["one"]] == [r["prediction"] for r in runs["two"]]
  for a, b in zip(runs["one"], runs["two"]):
    assert a["counters"] == pytest.approx(b["counters"], rel=1e-5)  # float sums may round
  assert json.loads((tmp_path / "two" / "metrics.json").read_text())["mesh"] == {
      "data": 2, "model": 1}
  assert json.loads((tmp_path / "one" / "metrics.json").read_text())["mesh"] is None


@pytest.mark.parametrize("extra,match", [
    (["--gin.METHOD='spec_cascade_chow'"], "needs alpha"),
    (["--gin.METHOD='spec_cascade_chow'", "--gin.ALPHA=3.0"], "outside the range"),
    (["--gin.METHOD='nope'"], "unknown method 'nope'"),
    (["--gin.METHOD='verifier'", "--gin.MIXTURE_OR_TASK_NAME='debian_nope'"],
     "unknown task 'debian_nope'"),
    (["--gin.METHOD='verifier'", "--gin.infer_script.infer.stream_batches=0"],
     "stream_batches must be a positive int"),
])
def test_infer_rejects_bad_settings(tmp_path, capsys, extra, match):
  # Checked before any model is loaded (the checkpoint paths do not even exist).
  assert infer.main(_infer_flags(tmp_path / "x", *extra, pair=False)) == 2
  assert match in capsys.readouterr().err
  assert not (tmp_path / "x" / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------
# The shipped gin configs.

def _parse(*files, bindings=()):
  gin.clear_config()
  for p in (REPO, os.path.join(REPO, "configs")):
    gin.add_config_file_search_path(p)
  gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files], list(bindings),
                                     finalize_config=False)


@pytest.mark.parametrize("name", ["small", "base", "large", "xl", "xxl"])
def test_t5_1_1_model_gins_match_the_named_configs(name):
  try:
    _parse(f"configs/models/t5_1_1/{name}.gin")
    cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert cfg.replace(dtype="float32") == NAMED_CONFIGS[f"t5_1_1_{name}"]
  assert cfg.dtype == "bfloat16"


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_cpu_model_gins_match_the_named_configs(name):
  try:
    _parse(f"configs/models/cpu/{name}.gin")
    cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert cfg == NAMED_CONFIGS[name]


def _run_sweep_bindings():
  return next(v for (_, sel), v in gin.config._CONFIG.items() if sel.endswith("run_sweep"))


@pytest.mark.parametrize("task,seqio_name", [("wmt_ende", "wmt_t2t_ende_v003"),
                                             ("cnn_dailymail", "cnn_dailymail_v002"),
                                             ("xsum", "xsum")])
def test_paper_gins_set_the_papers_setup(task, seqio_name):
  try:
    _parse(f"configs/paper/{task}.gin")
    q = gin.query_parameter
    assert q("%MIXTURE_OR_TASK_NAME") == seqio_name
    assert (q("%NUM_EXAMPLES"), q("%TRIALS"), q("%TEMPERATURES"), q("%NUM_DRAFT_TOKENS")) == (
        500, 3, [1.0], [5])
    from spec_cascade import sweep
    for m in infer.ALL_METHODS:  # every rule has a valid α grid
      sweep.alpha_grid(infer.resolve_method(m), q("%ALPHAS"))
    assert set(_run_sweep_bindings()) >= {"task", "output_dir", "drafter_checkpoint", "alphas"}
    _parse(f"configs/paper/{task}.gin", "configs/paper/appendix_temperature.gin",
           "configs/paper/appendix_gamma.gin")
    assert q("%TEMPERATURES") == [0.0, 0.1, 0.5, 1.0] and q("%NUM_DRAFT_TOKENS") == [3, 5, 7]
    _parse(f"configs/paper/{task}.gin", "configs/paper/appendix_top_p.gin")
    assert (q("%TOP_P"), q("%TEMPERATURES")) == (0.9, [1.0])
  finally:
    gin.clear_config()


@pytest.mark.parametrize("name", ["main", "quick"])
def test_offline_gins_parse_and_cover_both_tasks(name):
  from spec_cascade import sweep
  try:
    _parse(f"configs/offline/{name}.gin")
    q = gin.query_parameter
    assert q("%MIXTURE_OR_TASK_NAME") == ["debian_ende", "debian_summarize"]
    assert q("%TEMPERATURES") == [0.0, 1.0] and q("%NUM_DRAFT_TOKENS") == [5]
    methods = infer.resolve_methods(q("%METHODS"))
    if name == "main":
      assert [m.name for m in methods] == list(infer.ALL_METHODS)
    for m in methods:
      assert sweep.alpha_grid(m, q("%ALPHAS"), q("%NUM_ALPHAS"))
    # One pair of lengths for both tasks (they share every compiled program), and no per-task
    # binding that it would override.
    lengths = q("%TASK_FEATURE_LENGTHS")
    assert lengths["inputs"] == 256 and lengths["targets"] in (48, 64)
    b = _run_sweep_bindings()
    assert "input_length" not in b and "max_decode_length" not in b
  finally:
    gin.clear_config()


def test_every_shipped_run_gin_declares_what_it_binds():
  # All gin files parse (finetune gins need the trainer, which imports TF only for seqio tasks).
  files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.gin"), recursive=True))
  assert len(files) >= 20
  for f in files:
    rel = os.path.relpath(f, REPO)
    if "finetune" in rel or rel.startswith("configs/offline/train_") or rel.endswith(
        "offline/base.gin"):
      continue  # trainer configs: parsed by the trainer's own tests
    try:
      _parse(rel)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{rel}: {e}")
    finally:
      gin.clear_config()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["wmt_ende", "cnn_dailymail", "xsum"])
def test_paper_finetune_gins_train_the_model_gin_size(task):
  # reproduce_paper.sh passes the model gin first, then finetune_<task>.gin (which includes
  # configs/runs/finetune.gin, where MODEL is %gin.REQUIRED): MODEL must still be that size.
  import spec_cascade.train  # pylint: disable=unused-import
  try:
    _parse("configs/models/t5_1_1/large.gin", f"configs/paper/finetune_{task}.gin",
           bindings=["MODEL_DIR = '/tmp/x'", "INITIAL_CHECKPOINT_PATH = None"])
    cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert cfg.replace(dtype="float32") == NAMED_CONFIGS["t5_1_1_large"]
    assert gin.query_parameter("%TRAIN_STEPS") > 0
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_seqio_route_reads_the_same_examples_as_the_offline_route(env):
  # Any non-offline task name goes through seqio; the offline tasks are registered there too,
  # so both routes can be compared on the same split.
  from spec_cascade.data import tasks
  tasks.OFFLINE_VOCABULARY.reset()
  try:
    with gin.unlock_config():
      gin.bind_parameter("offline_settings.vocab_pieces", sweep_helpers.PIECES)
    rows, tok = eval_data._seqio_rows(TASK, "validation")  # pylint: disable=protected-access
    # What each host of a 2-host pod reads (seqio.ShardInfo), put back in split order.
    shares = [eval_data._seqio_rows(TASK, "validation", (i, 2))[0]  # pylint: disable=protected-access
              for i in range(2)]
    direct = infer.load_task(TASK, "validation", None, 0, str(env.vocab))
    size, text = tok.vocab_size, tok.decode(rows[0]["input_ids"])
  finally:
    gin.clear_config()
    tasks.OFFLINE_VOCABULARY.reset()
  assert len(rows) == len(direct.examples) and size == direct.tokenizer.vocab_size
  assert 0 < len(shares[1]) < len(rows)
  assert pod.interleave_shares(shares) == rows
  for r, e in zip(rows, direct.examples):
    assert (r["inputs"], r["targets"]) == (e.inputs, e.targets)
    assert tuple(r["input_ids"]) == e.input_ids
  assert text == direct.tokenizer.decode(direct.examples[0].input_ids)


def test_installed_pair_records_the_training_step_of_trainer_exports_and_stages(tmp_path):
  (tmp_path / "run" / "export").mkdir(parents=True)
  (tmp_path / "run" / "export" / "spec_cascade_checkpoint.json").write_text('{"step": 2800}')
  (tmp_path / "ckpt").mkdir()
  (tmp_path / "ckpt" / "spec_cascade_checkpoint.json").write_text('{"format": "x"}')
  assert pretrained._trained_step(tmp_path / "run") == 2800  # pylint: disable=protected-access
  assert pretrained._trained_step(tmp_path / "run" / "export") == 2800  # pylint: disable=protected-access
  assert pretrained._trained_step(tmp_path / "ckpt") is None  # pylint: disable=protected-access
  assert pretrained._trained_step(tmp_path / "elsewhere") is None  # pylint: disable=protected-access
  # A stage artifact (spec_cascade.stages) keeps its step under "stage".
  (tmp_path / "stage").mkdir()
  (tmp_path / "stage" / "spec_cascade_checkpoint.json").write_text(
      '{"format": "x", "stage": {"recipe": "r.gin", "step": 450}}')
  assert pretrained._trained_step(tmp_path / "stage") == 450  # pylint: disable=protected-access
