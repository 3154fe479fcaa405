"""spec_cascade.sweep: the α grid, the plan, the command line, and an end-to-end sweep whose files
agree with each other (and with a re-computation from the predictions), including resuming an
interrupted sweep."""
import csv
import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import sweep_helpers
from spec_cascade import decoding, deferral, infer, methods, metrics, output_dir, sweep
from spec_cascade import results as results_lib

TASK = "debian_ende"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The synthetic corpora; the random pair is saved by the end-to-end fixture only."""
  return sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", False)


@pytest.fixture(autouse=True)
def _env_vars(monkeypatch, env):
  sweep_helpers.use_env(monkeypatch, env)


def _write_gin(path, pair=False):
  # Without the pair, the checkpoint paths do not exist: errors must come before loading.
  drafter = "@pretrained.offline_drafter_path()" if pair else "'/nonexistent/drafter'"
  verifier = "@pretrained.offline_verifier_path()" if pair else "'/nonexistent/verifier'"
  return sweep_helpers.write_sweep_gin(
      path, TASK, drafter, verifier,
      "METHODS = ['drafter', 'specdecode', 'spec_cascade_chow', 'token_cascade_chow']\n"
      "ALPHAS = {'chow': [0.0, 0.6]}\n"
      "TEMPERATURES = [0.0, 1.0]\n"
      "NUM_DRAFT_TOKENS = [3]\n"
      "NUM_EXAMPLES = 10\n"
      "BATCH_SIZE = 4\n"
      "TRIALS = 2\n"
      "TASK_FEATURE_LENGTHS = {'inputs': None, 'targets': 10}\n"
      "sweep_script.run_sweep.progress = False\n"
      "sweep_script.run_sweep.cost_ratio_reps = 3\n")


# ----------------------------------------------------------------------------------------------
# The grid and the plan (no decoding).

def test_alpha_grid_auto_covers_the_rule_sweep_range():
  m = infer.resolve_method("spec_cascade_opt")
  lo, hi = deferral.RULES["opt"].sweep_range
  assert sweep.alpha_grid(m, None, 5) == pytest.approx(list(np.linspace(lo, hi, 5)))
  assert sweep.alpha_grid(infer.resolve_method("bild"), {}, 3) == pytest.approx(
      list(np.linspace(*methods.METHODS["bild"].alpha_sweep, 3)))
  assert sweep.alpha_grid(infer.resolve_method("verifier"), {"default": [0.5]}) == [None]
  assert sweep.alpha_grid(infer.resolve_method("specdecode"), None) == [None]


def test_alpha_grid_precedence_method_then_rule_then_default():
  alphas = {"spec_cascade_chow": [0.1], "chow": [0.2, 0.3], "default": [0.5]}
  assert sweep.alpha_grid(infer.resolve_method("spec_cascade_chow"), alphas) == [0.1]
  assert sweep.alpha_grid(infer.resolve_method("seq_cascade"), alphas) == [0.2, 0.3]
  assert sweep.alpha_grid(infer.resolve_method("spec_cascade_diff"), alphas) == [0.5]
  # Duplicates (after rounding) collapse, order is kept.
  assert sweep.alpha_grid(infer.resolve_method("oracle_diff"), {"diff": [0.3, 0.1, 0.3]}) == [
      0.3, 0.1]


@pytest.mark.parametrize("alphas,match", [
    ({"chow": [1.5]}, "outside the range"),
    ({"lossy": [1.0]}, "outside the range"),
    ({"chow": "everything"}, "'auto'"),
    ({"chow": []}, "empty"),
    ({"chow": ["x"]}, "numbers"),
])
def test_alpha_grid_rejects_bad_values(alphas, match):
  method = "specdecode_lossy" if "lossy" in alphas else "spec_cascade_chow"
  with pytest.raises(ValueError, match=match):
    sweep.alpha_grid(infer.resolve_method(method), alphas)


@pytest.mark.parametrize("lengths", [dict(input_length=128), dict(max_decode_length=32),
                                     dict(max_decode_length={TASK: 32})])
def test_feature_lengths_and_per_task_lengths_together_are_refused(tmp_path, lengths):
  # task_feature_lengths overrides them: accepting both would drop a setting without a word.
  with pytest.raises(ValueError, match="are both set; set one"):
    sweep.run_sweep(TASK, str(tmp_path / "out"), methods=["verifier"],
                    task_feature_lengths={"inputs": None, "targets": 8}, **lengths)
  assert not (tmp_path / "out").exists()


def test_tasks_at_the_same_shapes_share_one_cost_ratio():
  ende = {"c": 0.2, "batch_size": 16, "input_length": 256, "cache_length": 66}
  ratios = {"debian_ende": ende}
  assert sweep.same_shape_ratio(ratios, (16, 256), 66) == "debian_ende"
  for shape, cache in (((8, 256), 66), ((16, 128), 66), ((16, 256), 34)):
    assert sweep.same_shape_ratio(ratios, shape, cache) is None
  # A copied entry is never the source of another copy.
  ratios = {"a": dict(ende, same_shapes_as="b")}
  assert sweep.same_shape_ratio(ratios, (16, 256), 66) is None


def test_plan_runs_the_verifier_first_and_gamma_independent_methods_once():
  methods = infer.resolve_methods(["drafter", "spec_cascade_chow", "seq_cascade", "bild"])
  pts = sweep.plan_points(TASK, methods, {"chow": [0.2, 0.8], "bild": [1.0]}, 5, [0.0, 1.0],
                          [3, 5])
  assert [(p.method.name, p.temperature) for p in pts[:2]] == [("verifier", 0.0),
                                                                ("verifier", 1.0)]
  names = [p.method.name for p in pts]
  assert "verifier" not in names[2:]
  # drafter: once per T; seq_cascade: once per (T, α); chow and bild: per (γ, T, α).
  assert names.count("drafter") == 2 and names.count("seq_cascade") == 4
  assert names.count("spec_cascade_chow") == 8 and names.count("bild") == 4
  assert {p.num_draft_tokens for p in pts if not p.method.gamma_dependent} == {None}
  assert len({p.key for p in pts}) == len(pts)
  assert len({p.name for p in pts}) == len(pts)
  # A method's points are contiguous (one compiled program at a time).
  runs = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
  assert len(runs) == len(set(runs))


def test_speccascade_rules_share_one_program_and_specdecode_keeps_its_own():
  methods_ = infer.resolve_methods(["specdecode", "spec_cascade_chow", "spec_cascade_token_v3",
                                    "specdecode_lossy", "oracle_diff", "token_cascade_chow"])
  pts = sweep.plan_points(TASK, methods_, {"default": [0.3]}, 5, [1.0], [3])
  assert sweep.shared_rule_sets(pts) == {"spec_cascade": ("chow", "token_v3")}
  # One rule of a method: nothing to share.
  assert sweep.shared_rule_sets(pts[:3]) == {}


def test_method_names_resolve_to_the_engine():
  assert infer.resolve_method("spec_decode").name == "specdecode"
  m = infer.resolve_method("oracle_token_v3")
  assert (m.engine_method, m.engine_rule, m.gamma_dependent) == ("oracle", "token_v3", False)
  m = infer.resolve_method("spec_cascade_token_v3")
  assert (m.engine_method, m.engine_rule, m.gamma_dependent) == ("spec_cascade", "token_v3",
                                                                  True)
  for name in infer.ALL_METHODS:
    m = infer.resolve_method(name)
    assert m.engine_method in decoding.METHODS
    assert (m.rule or results_lib.default_rule(name)) == results_lib.default_rule(name)
  with pytest.raises(ValueError, match="unknown method 'spec_cascade_nope'.*token_v3"):
    infer.resolve_method("spec_cascade_nope")


# ----------------------------------------------------------------------------------------------
# Command-line errors.

def _main_error(capsys, *flags):
  rc = sweep.main(list(flags))
  err = capsys.readouterr().err
  assert rc == 2, err
  return err


def test_bad_gin_bindings_fail_with_the_offending_flag(tmp_path, capsys):
  gin_file = str(_write_gin(tmp_path / "t.gin"))
  out = f"--gin.SWEEP_OUTPUT_DIR='{tmp_path / 'out'}'"
  err = _main_error(capsys, f"--gin_file={gin_file}", out, "--gin.BATCH_SIZ=4")
  assert "--gin.BATCH_SIZ=4" in err and "typo" in err and "BATCH_SIZE" in err
  err = _main_error(capsys, f"--gin_file={gin_file}", out,
                    "--gin.sweep_script.run_sweep.batch_siz=4")
  assert "bad gin binding '--gin.sweep_script.run_sweep.batch_siz=4'" in err
  assert "batch_siz" in err
  err = _main_error(capsys, f"--gin_file={gin_file}", "--gin.SWEEP_OUTPUT_DIR=/tmp/x")
  assert "SWEEP_OUTPUT_DIR" in err and "quote" in err
  err = _main_error(capsys, f"--gin_file={gin_file}", out, "--gin.BATCH_SIZE=[")
  assert "--gin.BATCH_SIZE=[" in err
  err = _main_error(capsys, f"--gin_file={tmp_path / 'missing.gin'}")
  assert "missing.gin" in err
  err = _main_error(capsys, f"--gin_file={gin_file}")
  assert "required gin values are not set: SWEEP_OUTPUT_DIR" in err
  assert "--gin.SWEEP_OUTPUT_DIR=VALUE" in err
  err = _main_error(capsys, f"--gin_file={gin_file}", out, "--bogus")
  assert "--bogus" in err
  assert not (tmp_path / "out").exists()


def test_full_module_paths_work_in_bindings(tmp_path):
  import gin
  from spec_cascade import gin_cli
  gin_file = str(_write_gin(tmp_path / "t.gin"))
  args = gin_cli.parse_flags([f"--gin_file={gin_file}",
                              "--gin.spec_cascade.sweep.run_sweep.batch_size=3",
                              "--gin_bindings=SWEEP_OUTPUT_DIR = 'x'"], "test")
  gin_cli.configure(args)
  try:
    assert gin.query_parameter("%SWEEP_OUTPUT_DIR") == "x"
    params = [v for (_, sel), v in gin.config._CONFIG.items() if sel.endswith("run_sweep")]
    assert params and params[0]["batch_size"] == 3
  finally:
    gin.clear_config()


@pytest.mark.parametrize("flag,match", [
    ("--gin.METHODS=['verifier', 'nope']", "unknown method 'nope'"),
    ("--gin.ALPHAS={'chow': [2.0]}", "outside the range"),
    ("--gin.ALPHAS={'chw': [0.2]}", "ALPHAS key 'chw' names no method or rule"),
    ("--gin.TEMPERATURES=[-1.0]", "temperature"),
    ("--gin.MIXTURE_OR_TASK_NAME='no_such_task'", "unknown task 'no_such_task'"),
])
def test_unknown_names_and_bad_values_fail_before_decoding(tmp_path, capsys, monkeypatch, flag,
                                                           match):
  calls = []
  monkeypatch.setattr(decoding, "generate", lambda *a, **k: calls.append(1))
  gin_file = str(_write_gin(tmp_path / "t.gin"))
  err = _main_error(capsys, f"--gin_file={gin_file}",
                    f"--gin.SWEEP_OUTPUT_DIR='{tmp_path / 'out'}'", flag)
  assert match in err
  assert not calls
  assert not os.path.exists(tmp_path / "out" / "results.csv")


# ----------------------------------------------------------------------------------------------
# End to end: an interrupted sweep, resumed, then checked file by file.

class _Interrupt(Exception):
  pass


def _point_of(args, kwargs) -> tuple:
  """(method, α, T) of a `decoding.generate` call, its settings a DecodeConfig (what the sweep
  passes) or keywords."""
  config = args[3] if len(args) > 3 else decoding.DecodeConfig(**{
      k: v for k, v in kwargs.items() if k not in ("example_ids", "mesh")})
  return config.method, config.alpha, config.temperature


@pytest.fixture(scope="module")
def swept(env, tmp_path_factory):
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  mp = pytest.MonkeyPatch()
  sweep_helpers.use_env(mp, env)
  root = tmp_path_factory.mktemp("sweep")
  gin_file = _write_gin(root / "t.gin", pair=True)
  out = root / "out"
  flags = [f"--gin_file={gin_file}", f"--gin.SWEEP_OUTPUT_DIR='{out}'"]
  real = decoding.generate
  log = []

  def interrupted(*args, **kwargs):
    if len(log) == 19:
      raise _Interrupt("killed")
    log.append(_point_of(args, kwargs))
    return real(*args, **kwargs)

  try:
    mp.setattr(decoding, "generate", interrupted)
    with pytest.raises(_Interrupt):
      sweep.main(flags)
    after_interrupt = results_lib.read_rows(out / "results.csv")
    resumed = []

    def counting(*args, **kwargs):
      resumed.append(_point_of(args, kwargs))
      return real(*args, **kwargs)

    mp.setattr(decoding, "generate", counting)
    assert sweep.main(flags) == 0
    final_csv = (out / "results.csv").read_text()
    again = []
    mp.setattr(decoding, "generate", lambda *a, **k: again.append(1) or real(*a, **k))
    assert sweep.main(flags) == 0
  finally:
    mp.undo()
  return {"out": out, "first": log, "after_interrupt": after_interrupt, "resumed": resumed,
          "again": again, "final_csv": final_csv}


@pytest.mark.slow
def test_resume_runs_exactly_the_missing_points(swept):
  done = {r.key for r in swept["after_interrupt"]}
  # 1 warm-up + 2 trials × 3 batches per verifier T; the drafter was cut off mid-way.
  assert {r.method for r in swept["after_interrupt"]} == {"verifier"} and len(done) == 2
  rows = results_lib.read_rows(swept["out"] / "results.csv")
  missing = [r for r in rows if r.key not in done]
  programs = {(r.method, r.num_draft_tokens) for r in missing}
  n_batches = math.ceil(10 / 4)
  assert len(swept["resumed"]) == len(missing) * 2 * n_batches + len(programs)
  # Nothing left: the third run decodes nothing and leaves the table as it was.
  assert swept["again"] == []
  assert (swept["out"] / "results.csv").read_text() == swept["final_csv"]


@pytest.mark.slow
def test_trials_draw_with_their_own_seeds(swept):
  """Two trials per point: at T = 0 they agree (quality std 0); at T = 1 each trial has its own
  seed, so sampled methods' trial qualities differ somewhere, and the row reports their mean."""
  rows = {r.key: r for r in results_lib.read_rows(swept["out"] / "results.csv")}
  differ = False
  for path in sorted((swept["out"] / "metrics" / TASK).glob("*.json")):
    m = json.loads(path.read_text())
    r = rows[results_lib.make_key(TASK, m["method"], m["alpha"], m["temperature"],
                                  m["num_draft_tokens"])]
    assert len(m["trial_quality"]) == 2
    assert r.quality == pytest.approx(np.mean(m["trial_quality"])) == m["quality"]
    assert r.quality_std == pytest.approx(np.std(m["trial_quality"], ddof=1))
    if r.temperature == 0.0:
      assert r.quality_std == 0.0
    else:
      differ |= m["trial_quality"][0] != m["trial_quality"][1]
  assert differ


@pytest.mark.slow
def test_resume_under_other_settings_or_beside_a_running_sweep_is_refused(swept, capsys):
  """A re-run into the folder with fewer examples or another decode length would mix its
  points with (and normalise them by) the old ones: refused, naming each change; a folder
  another live sweep holds is refused, naming that process. Nothing written changes."""
  out = swept["out"]
  flags = [f"--gin_file={out.parent / 't.gin'}", f"--gin.SWEEP_OUTPUT_DIR='{out}'"]
  before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  err = _main_error(capsys, *flags, "--gin.NUM_EXAMPLES=6", "--gin.BATCH_SIZE=2")
  assert "other settings" in err and "num_examples: 10 → 6" in err
  assert "batch_size: 4 → 2" in err and "new output folder" in err
  lock = out / output_dir.LOCK_FILE
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                "started": "2026-12-06T01:00:00"}))
    err = _main_error(capsys, *flags)
    assert f"in use by another sweep (pid {holder.pid}" in err and str(lock) in err
  finally:
    holder.kill()
    holder.wait()
  # A lock whose process is gone is taken over; the resume then has nothing to do.
  assert sweep.main(flags) == 0 and not lock.exists()
  after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  assert after["results.csv"] == before["results.csv"]
  assert after[output_dir.SETTINGS_FILE] == before[output_dir.SETTINGS_FILE]


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_sweep_files_agree_with_each_other(swept):
  out = swept["out"]
  rows = results_lib.read_rows(out / "results.csv")
  plan = sweep.plan_points(TASK, infer.resolve_methods(
      ["drafter", "specdecode", "spec_cascade_chow", "token_cascade_chow"]),
      {"chow": [0.0, 0.6]}, 5, [0.0, 1.0], [3])
  assert sorted(r.key for r in rows) == sorted(p.key for p in plan)
  for name in ("config.gin", "report.md", "report.html", f"quality_vs_latency__{TASK}_T0_g3.png",
               f"quality_vs_latency__{TASK}_T1_g3.svg",
               f"quality_vs_modelled_latency__{TASK}_T0_g3.png",
               f"quality_vs_deferral__{TASK}_T1_g3.svg",
               f"appendix_quality_vs_modelled_latency__{TASK}_T1_g3.png", "cost_ratio.json"):
    assert (out / name).is_file(), name
  # The per-example statistics the report's intervals resample, one list per trial.
  stored = json.loads((out / "metrics" / TASK / "spec_cascade_chow__T1__g3__a0.6.json"
                       ).read_text())["example_stats"]
  assert stored["fields"] and len(stored["trials"]) == rows[0].trials
  assert "% bootstrap interval over examples" in (out / "report.md").read_text()
  config = (out / "config.gin").read_text()
  assert "run_sweep" in config and TASK in config
  assert "Speculative cascades: results" in (out / "report.md").read_text()
  c = json.loads((out / "cost_ratio.json").read_text())[TASK]["c"]
  assert c > 0

  points = {p.key: p for p in plan}
  verifier = {r.temperature: r for r in rows if r.method == "verifier"}
  preds = {}
  for r in rows:
    p = points[r.key]
    m = json.loads((out / "metrics" / TASK / f"{p.name}.json").read_text())
    recs = _read_jsonl(out / "predictions" / TASK / f"{p.name}.jsonl")
    preds[(r.method, r.alpha if not math.isnan(r.alpha) else None, r.temperature)] = [
        x["prediction"] for x in recs]
    assert len(recs) == r.num_examples == 10 and r.trials == 2
    assert {"input", "target", "prediction", "counters", "index", "id"} <= set(recs[0])
    # Quality: row == metrics file == BLEU recomputed from the predictions file.
    bleu = metrics.bleu([x["target"] for x in recs], [x["prediction"] for x in recs])["bleu"]
    # (the predictions are the first trial's; the row's quality is the trials' mean)
    assert m["trial_quality"][0] == m["scores"]["bleu"] == bleu and r.metric == "bleu"
    assert r.quality == m["quality"]
    # Counters: per-example sums == the totals in the row and in the metrics file.
    for f in decoding.COUNTER_FIELDS:
      s = sum(x["counters"][f] for x in recs)
      assert m["counters"][f] == pytest.approx(s)
      assert float(r.extra[f"{f}_total"]) == pytest.approx(s)
    tot = m["counters"]
    assert r.wallclock_s == pytest.approx(np.mean(m["trial_wallclock_s"]), rel=1e-12)
    assert r.cost_ratio_c == c
    v = verifier[r.temperature]
    assert r.rel_latency == pytest.approx(r.wallclock_s / v.wallclock_s, rel=1e-12)
    modelled = (tot["drafter_steps"] * c + tot["verifier_calls"]) / float(
        v.extra["verifier_calls_total"])
    assert r.modelled_rel_latency == pytest.approx(modelled, rel=1e-12)
    if tot["drafted"]:
      assert r.acceptance_rate == pytest.approx(tot["accepted"] / tot["drafted"])
      assert 0 <= r.acceptance_rate <= 1
    assert r.tokens_per_verifier_call == pytest.approx(
        tot["output_tokens"] / tot["verifier_calls"]) if tot["verifier_calls"] else math.isnan(
            r.tokens_per_verifier_call)
    assert 0.0 <= r.deferral_rate <= 1.0
    assert int(r.extra["truncated_inputs"]) == 0
    # Points after the first of their program carry the program's compile time too.
    assert float(r.extra["compile_s"]) >= 0

  for t, v in verifier.items():
    assert v.rel_latency == 1.0 and v.modelled_rel_latency == 1.0 and v.deferral_rate == 1.0
    assert v.acceptance_rate != v.acceptance_rate  # NaN: nothing drafted
  for r in rows:
    if r.method == "drafter":
      assert r.deferral_rate == 0.0 and float(r.extra["verifier_calls_total"]) == 0
  # Greedy SpecDecode is lossless: same text, same quality as the verifier; so is the cascade
  # whose rule always defers (Chow at α = 0).
  ver0 = preds[("verifier", None, 0.0)]
  assert preds[("specdecode", None, 0.0)] == ver0
  assert preds[("spec_cascade_chow", 0.0, 0.0)] == ver0
  q = {(r.method, r.alpha if not math.isnan(r.alpha) else None, r.temperature): r.quality
       for r in rows}
  assert q[("specdecode", None, 0.0)] == q[("verifier", None, 0.0)]
  assert q[("spec_cascade_chow", 0.0, 0.0)] == q[("verifier", None, 0.0)]
  # The CSV is the results.py schema.
  with open(out / "results.csv", newline="") as f:
    header = next(csv.reader(f))
  assert tuple(header[:len(results_lib.COLUMNS)]) == results_lib.COLUMNS


def test_remote_output_is_staged_locally_and_copied_back(tmp_path):
  """A gs:// output folder is mirrored: seeded into a local folder, copied back at the end."""
  remote = tmp_path / "remote"
  (remote / "metrics").mkdir(parents=True)
  (remote / "results.csv").write_text("old\n")
  (remote / "metrics" / "a.json").write_text("{}")
  seen = {}

  def run(local):
    seen["files"] = sorted(p.relative_to(local).as_posix() for p in pathlib.Path(local).rglob("*"))
    (pathlib.Path(local) / "results.csv").write_text("new\n")
    (pathlib.Path(local) / "report.md").write_text("# r\n")
    raise KeyboardInterrupt  # a stopped sweep still copies what it wrote

  with pytest.raises(KeyboardInterrupt):
    sweep._run_staged(str(remote), run)  # pylint: disable=protected-access
  assert seen["files"] == ["metrics", "metrics/a.json", "results.csv"]
  assert (remote / "results.csv").read_text() == "new\n"
  assert (remote / "report.md").exists() and (remote / "metrics" / "a.json").exists()


@pytest.mark.slow
def test_batch1_latency_regime_is_measured_and_reported_first(tmp_path, env,
                                                              tmp_path_factory, monkeypatch):
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  sweep_helpers.use_env(monkeypatch, env)
  gin_file = _write_gin(tmp_path / "t.gin", pair=True)
  out = tmp_path / "out"
  calls = []
  real = decoding.generate

  def counting(*args, **kwargs):
    calls.append(np.shape(args[2])[0])
    return real(*args, **kwargs)
  monkeypatch.setattr(decoding, "generate", counting)
  assert sweep.main([f"--gin_file={gin_file}", f"--gin.SWEEP_OUTPUT_DIR='{out}'",
                     "--gin.METHODS=['specdecode']", "--gin.TEMPERATURES=[0.0]",
                     "--gin.TRIALS=1", "--gin.LATENCY_EXAMPLES=3"]) == 0
  rows = {r.method: r for r in results_lib.read_rows(out / "results.csv")}
  assert set(rows) == {"verifier", "specdecode"}
  assert rows["verifier"].rel_latency_batch1 == 1.0
  assert all(r.latency_s > 0 for r in rows.values())
  assert rows["specdecode"].rel_latency_batch1 == pytest.approx(
      rows["specdecode"].latency_s / rows["verifier"].latency_s)
  # Per method: one compile call and 3 timed calls with a single row.
  assert calls.count(1) == 2 * (1 + 3)
  report_md = (out / "report.md").read_text()
  assert report_md.index("one example at a time (batch 1") < report_md.index("## Throughput")
  assert "(batch-1 latency)" in report_md
  assert (out / f"quality_vs_batch1_latency__{TASK}_T0_g3.png").exists()


@pytest.mark.slow
def test_shared_rule_programs_change_no_result(tmp_path, tmp_path_factory, monkeypatch):
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  sweep_helpers.use_env(monkeypatch, env)
  gin_file = _write_gin(tmp_path / "t.gin", pair=True)
  real = decoding.generate
  keys = []

  def recording(*args, **kwargs):
    config = args[3]
    if config.method == "spec_cascade":
      keys.append(config.program_key(np.shape(args[2])))
    return real(*args, **kwargs)
  monkeypatch.setattr(decoding, "generate", recording)
  rows = {}
  for share in (True, False):
    out = tmp_path / f"share_{share}"
    assert sweep.main([f"--gin_file={gin_file}", f"--gin.SWEEP_OUTPUT_DIR='{out}'",
                       "--gin.METHODS=['spec_cascade_chow', 'spec_cascade_diff']",
                       "--gin.ALPHAS={'chow': [0.6], 'diff': [0.1]}",
                       "--gin.TEMPERATURES=[1.0]", "--gin.TRIALS=1",
                       f"--gin.sweep_script.run_sweep.share_rule_programs={share}"]) == 0
    rows[share] = {r.key: r for r in results_lib.read_rows(out / "results.csv")}
    # Shared: both rules' calls run one program per batch shape; unshared: one per rule.
    shapes = {k[1] for k in keys}
    assert len(set(keys)) == len(shapes) * (1 if share else 2)
    keys.clear()
  assert rows[True].keys() == rows[False].keys()
  same = lambda r: (r.quality, r.acceptance_rate, r.deferral_rate,
                    {k: v for k, v in r.extra.items() if k != "compile_s"})  # counters et al.
  for key, row in rows[True].items():
    # NaN == NaN here (the verifier has no acceptance rate).
    np.testing.assert_equal(same(row), same(rows[False][key]), err_msg=str(key))


def test_lossy_beta_reaches_the_engine_and_its_program_key():
  m = infer.resolve_method("specdecode_lossy")
  settings = infer.DecodeSettings(lossy_beta=0.8)
  config = infer.engine_config(m, settings, 0.3, 1.0, 3)
  assert config.beta == 0.8 and config.alpha == 0.3
  assert infer.engine_config(m, infer.DecodeSettings(), 0.3, 1.0, 3).beta is None
  assert infer.engine_config(infer.resolve_method("spec_cascade_chow"), settings, 0.3, 1.0,
                             3).beta is None
  solved = infer.engine_config(m, infer.DecodeSettings(), 0.3, 1.0, 3).program_key((8, 64))
  fixed = config.program_key((8, 64))
  assert solved != fixed and not fixed[0].solve_beta
