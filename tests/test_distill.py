"""Drafter distillation: the KD divergences, the trainer's KD / on-policy / sequence-level
paths, exact resume with a teacher, the teacher-target cache, and model growth."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import distill
from spec_cascade import distill_data
from spec_cascade import train as T
from spec_cascade import train_data as D
from spec_cascade.decoding import Bundle
from spec_cascade.models import T5Model, get_config
from spec_cascade.models import grow

from test_train import CFG, LENGTHS, _flat, token_examples

STUDENT = CFG.replace(dropout_rate=0.0)
TEACHER = STUDENT.replace(emb_dim=48, mlp_dim=96, num_decoder_layers=2)


# ---------------------------------------------------------------------------
# The divergences

def test_divergences_match_hand_computed_values():
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.2, 0.6])
  m = (p + q) / 2
  want = {
      "forward_kl": np.sum(p * np.log(p / q)),
      "reverse_kl": np.sum(q * np.log(q / p)),
      "tvd": 0.5 * np.sum(np.abs(p - q)),  # = 0.4: SpecDecode would accept 60 %
      "jsd": 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)),
  }
  assert want["tvd"] == pytest.approx(0.4)
  for name, value in want.items():
    got = distill.token_divergence(jnp.log(q), jnp.log(p), name)
    assert float(got) == pytest.approx(value, rel=1e-5), name
  # Teacher temperature τ: the teacher's distribution is softmax(logits / τ).
  tau = 2.0
  p_tau = p ** (1 / tau) / np.sum(p ** (1 / tau))
  got = distill.token_divergence(jnp.log(q), jnp.log(p), "forward_kl", tau)
  assert float(got) == pytest.approx(np.sum(p_tau * np.log(p_tau / q)), rel=1e-5)


def test_equal_teacher_and_student_give_zero_and_gradients_flow_to_the_student_only():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
  weights = jnp.ones((2, 5))
  for name in distill.DIVERGENCES:
    sums = distill.kd_sums(logits, logits, weights, name)
    assert abs(float(sums["kd"])) < 1e-5, name
    assert float(sums["agree"]) == 10.0
  other = jax.random.normal(jax.random.key(1), (2, 5, 11))
  grad_s, grad_t = jax.grad(
      lambda s, t: distill.kd_sums(s, t, weights, "reverse_kl")["kd"], argnums=(0, 1))(
          other, logits)
  assert float(jnp.abs(grad_s).sum()) > 0 and float(jnp.abs(grad_t).sum()) == 0.0
  # Padding positions (weight 0) contribute nothing.
  masked = distill.kd_sums(other, logits, weights.at[:, 3:].set(0.0), "tvd")
  full = distill.token_divergence(other, logits, "tvd")
  assert float(masked["kd"]) == pytest.approx(float(full[:, :3].sum()), rel=1e-5)


def test_distillation_settings_are_checked():
  with pytest.raises(ValueError, match="TEACHER_CHECKPOINT_PATH"):
    distill.Distillation("")
  with pytest.raises(ValueError, match="divergence 'kl'.*forward_kl"):
    distill.Distillation("x", divergence="kl")
  with pytest.raises(ValueError, match="KD_WEIGHT"):
    distill.Distillation("x", kd_weight=1.5)
  with pytest.raises(ValueError, match="SEQUENCE_TARGETS"):
    distill.Distillation("x", sequence_targets="beam")
  with pytest.raises(ValueError, match="ON_POLICY_FRACTION"):
    distill.Distillation("x", on_policy_fraction=-0.1)


def test_on_policy_steps_are_a_pure_function_of_seed_and_step():
  picks = [distill.is_on_policy_step(0, s, 0.3) for s in range(2000)]
  assert picks == [distill.is_on_policy_step(0, s, 0.3) for s in range(2000)]
  assert 0.25 < np.mean(picks) < 0.35
  assert picks != [distill.is_on_policy_step(1, s, 0.3) for s in range(2000)]
  assert not distill.is_on_policy_step(0, 5, 0.0) and distill.is_on_policy_step(0, 5, 1.0)


def test_sample_decode_weights_cover_each_row_up_to_its_eos():
  model = T5Model(STUDENT)
  params = model.init_params(jax.random.key(0))
  # A bias towards EOS makes some rows stop early.
  params = jax.tree.map(lambda x: x, params)
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, D.EOS_ID].add(0.3)
  x = jnp.asarray(np.random.default_rng(0).integers(2, 100, (16, 6)), jnp.int32)
  tokens, weights = T.sample_decode(model, params, x, 12, jax.random.key(3), 1.0)
  tokens, weights = np.asarray(tokens), np.asarray(weights)
  for row, w in zip(tokens, weights):
    eos = np.flatnonzero(row == D.EOS_ID)
    n = eos[0] + 1 if eos.size else len(row)
    assert w.tolist() == [1.0] * n + [0.0] * (len(row) - n)
    assert not row[n:].any()
  assert 0 < weights.sum() < weights.size  # some rows stopped
  greedy = np.asarray(T.greedy_decode(model, params, x, 12))
  assert not np.array_equal(greedy, tokens)  # sampling, not argmax


# ---------------------------------------------------------------------------
# The trainer

def _teacher_dir(tmp_path, config=TEACHER, steps=3):
  """A trained (a few steps) teacher export: a distinct distribution from the student's."""
  path = tmp_path / "teacher"
  if not (path / "export").exists():
    tx = T.make_optimizer("adafactor", T.create_learning_rate_schedule("constant", 0.01))
    T.train(model_dir=str(path), model=config, total_steps=steps, batch_size=8, optimizer=tx,
            train_source=_source(), eval_steps=0, checkpoint_period=100)
  return str(path)


def _source(seed=0, n=96):
  ins, tgts = token_examples(n, seed)
  return D.OfflineBatches(ins, tgts, 8, LENGTHS, seed=seed, window_batches=4)


@pytest.fixture(scope="module")
def tx():
  return T.make_optimizer("adafactor", T.create_learning_rate_schedule("constant", 0.01))


def test_teacher_equal_to_student_gives_zero_kd_loss(tmp_path, tx):
  # The student starts from the teacher's own export: the first step's KD term is 0.
  teacher = _teacher_dir(tmp_path, STUDENT)
  first = {}
  T.train(model_dir=str(tmp_path / "s"), model=STUDENT, total_steps=1, batch_size=8,
          optimizer=tx, train_source=_source(), eval_steps=0, initial_checkpoint_path=teacher,
          distillation=distill.Distillation(teacher, kd_weight=0.5, divergence="tvd"),
          step_callback=lambda s, m: first.update(jax.device_get(m)))
  assert abs(float(first["kd"])) < 1e-4 and float(first["tvd"]) < 1e-4
  assert float(first["agree"]) == float(first["weight"])
  # With kd_weight 0.5 the loss is half the label loss (+ z-loss).
  w = float(first["weight"])
  want = (0.5 * float(first["cross_entropy"]) + float(first["z_loss"])) / w
  assert float(first["loss"]) == pytest.approx(want, rel=1e-5)


def test_kd_raises_acceptance_and_logs_it(tmp_path, tx):
  teacher = _teacher_dir(tmp_path)
  res = T.train(model_dir=str(tmp_path / "s"), model=STUDENT, total_steps=40, batch_size=8,
                optimizer=tx, train_source=_source(), eval_source=_source(1).__class__(
                    *token_examples(16, 5), 8, LENGTHS, shuffle=False),
                eval_period=40, eval_steps=2, log_period=10, checkpoint_period=100,
                distillation=distill.Distillation(teacher, kd_weight=1.0, divergence="tvd"))
  records = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
  train_recs = [r for r in records if r["kind"] == "train"]
  assert train_recs[-1]["acceptance"] > train_recs[0]["acceptance"] + 0.05, train_recs
  assert {"eval_kd", "eval_acceptance", "eval_agreement"} <= set(res.eval_metrics)
  assert 0.0 <= res.eval_metrics["eval_acceptance"] <= 1.0


@pytest.mark.parametrize("on_policy_fraction", [0.0, 0.5])
def test_distillation_resume_is_exact(tmp_path, tx, on_policy_fraction):
  teacher = _teacher_dir(tmp_path)
  kd = distill.Distillation(teacher, kd_weight=0.7, divergence="forward_kl",
                            teacher_temperature=2.0, on_policy_fraction=on_policy_fraction)
  common = dict(model=STUDENT, total_steps=7, batch_size=8, optimizer=tx, checkpoint_period=3,
                eval_period=100, eval_steps=0, log_period=7, distillation=kd)
  ref_losses = {}
  ref = T.train(model_dir=str(tmp_path / "ref"), train_source=_source(),
                step_callback=lambda s, m: ref_losses.setdefault(s, float(m["loss"])),
                **common)

  class Killed(Exception):
    pass

  def kill_at_5(step, _):
    if step == 5:
      raise Killed

  with pytest.raises(Killed):
    T.train(model_dir=str(tmp_path / "run"), train_source=_source(), step_callback=kill_at_5,
            **common)
  resumed = {}
  res = T.train(model_dir=str(tmp_path / "run"), train_source=_source(),
                step_callback=lambda s, m: resumed.setdefault(s, float(m["loss"])), **common)
  assert sorted(resumed) == [4, 5, 6, 7]
  assert all(resumed[s] == ref_losses[s] for s in resumed), (resumed, ref_losses)
  for (path, a), (_, b) in zip(_flat(ref.params), _flat(res.params)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  if on_policy_fraction:
    on = [s for s in range(7) if distill.is_on_policy_step(0, s, on_policy_fraction)]
    assert 0 < len(on) < 7  # both kinds of step ran


def test_teacher_with_another_vocabulary_is_refused(tmp_path, tx):
  teacher = _teacher_dir(tmp_path)
  with pytest.raises(ValueError, match="vocab_size 128 but the student has 256"):
    T.train(model_dir=str(tmp_path / "s"), model=STUDENT.replace(vocab_size=256),
            total_steps=1, batch_size=8, optimizer=tx, train_source=_source(), eval_steps=0,
            distillation=distill.Distillation(teacher))
  with pytest.raises(FileNotFoundError, match="TEACHER_CHECKPOINT_PATH"):
    T.train(model_dir=str(tmp_path / "s2"), model=STUDENT, total_steps=1, batch_size=8,
            optimizer=tx, train_source=_source(), eval_steps=0,
            distillation=distill.Distillation(str(tmp_path / "missing")))


# ---------------------------------------------------------------------------
# Sequence-level targets

def test_teacher_targets_are_greedy_outputs_cached_and_resumable(tmp_path, monkeypatch):
  model = T5Model(TEACHER)
  params = model.init_params(jax.random.key(1))
  ins, _ = token_examples(21, 3)
  out = str(tmp_path / "targets")
  kw = dict(max_length=8, shard_size=8, batch_size=4, teacher_name="t")
  targets = distill_data.teacher_targets(Bundle(model, params), ins, out, **kw)
  assert len(targets) == 21 and sorted(os.listdir(out)) == [
      "manifest.json", "shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
  # Greedy targets are the teacher's greedy outputs, cut after EOS.
  x = np.zeros((21, 16), np.int32)
  for i, a in enumerate(ins):
    x[i, :len(a)] = a
  greedy = np.asarray(T.greedy_decode(model, params, jnp.asarray(x), 8))
  for i, t in enumerate(targets):
    assert t.tolist() == greedy[i, :len(t)].tolist() and not greedy[i, len(t):].any()
  # A second call reads the cache: no decoding at all.
  from spec_cascade import decoding
  monkeypatch.setattr(decoding, "generate", lambda *a, **k: pytest.fail("regenerated"))
  again = distill_data.teacher_targets(Bundle(model, params), ins, out, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(targets, again))
  monkeypatch.undo()
  # An interrupted generation (a shard missing) resumes with the same targets.
  os.remove(os.path.join(out, "shard_00001.npz"))
  resumed = distill_data.teacher_targets(Bundle(model, params), ins, out, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(targets, resumed))
  # Other settings never reuse the cache silently.
  with pytest.raises(ValueError, match="other settings.*temperature"):
    distill_data.teacher_targets(Bundle(model, params), ins, out, **dict(kw, temperature=1.0))
  with pytest.raises(ValueError, match="inputs_sha256"):
    distill_data.teacher_targets(Bundle(model, params), ins[:-1], out, **kw)


def test_sampled_teacher_targets_do_not_depend_on_shard_size(tmp_path):
  model = T5Model(TEACHER)
  params = model.init_params(jax.random.key(1))
  ins, _ = token_examples(12, 4)
  a = distill_data.teacher_targets(Bundle(model, params), ins, str(tmp_path / "a"),
                                   max_length=8, temperature=1.0, seed=5, shard_size=5,
                                   batch_size=3)
  b = distill_data.teacher_targets(Bundle(model, params), ins, str(tmp_path / "b"),
                                   max_length=8, temperature=1.0, seed=5, shard_size=12,
                                   batch_size=4)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_trainer_trains_on_teacher_targets(tmp_path, tx):
  teacher = _teacher_dir(tmp_path)
  kd = distill.Distillation(teacher, kd_weight=0.0, sequence_targets="greedy")
  res = T.train(model_dir=str(tmp_path / "s"), model=STUDENT, total_steps=2, batch_size=8,
                optimizer=tx, train_source=_source(), eval_steps=0, distillation=kd)
  assert res.step == 2
  manifest = json.load(open(tmp_path / "s" / "teacher_targets" / "manifest.json"))
  assert manifest["temperature"] == 0.0 and manifest["num_examples"] == 96


# ---------------------------------------------------------------------------
# Growth and cutting

def test_deepened_model_computes_the_same_logits():
  config = get_config("tiny").replace(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16,
                                      mlp_dim=64, num_encoder_layers=2, num_decoder_layers=2)
  model = T5Model(config)
  params = model.init_params(jax.random.key(0))
  big_config, big_params = grow.deepen(params, config, num_encoder_layers=3,
                                       num_decoder_layers=5)
  big = T5Model(big_config)
  big.check_params(big_params)
  x = jnp.asarray(np.random.default_rng(0).integers(2, 128, (3, 10)), jnp.int32)
  y = jnp.asarray(np.random.default_rng(1).integers(2, 128, (3, 7)), jnp.int32)
  np.testing.assert_allclose(big.forward(big_params, x, y), model.forward(params, x, y),
                             atol=1e-5)
  assert grow.layer_sources(2, 5) == [(0, False), (0, True), (0, True), (1, False),
                                      (1, True)]
  # The new layers learn: their zeroed projections get gradients at once.
  grads = jax.grad(lambda p: jnp.sum(big.forward(p, x, y) ** 2))(big_params)
  assert float(jnp.abs(grads["decoder"]["layers_1"]["mlp"]["wo"]["kernel"]).sum()) > 0
  with pytest.raises(ValueError, match="at least as many"):
    grow.deepen(params, config, num_decoder_layers=1)


def test_widened_model_computes_the_same_logits():
  config = get_config("tiny").replace(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16,
                                      mlp_dim=48, num_encoder_layers=2, num_decoder_layers=2)
  model = T5Model(config)
  params = model.init_params(jax.random.key(0))
  wide_config, wide_params = grow.widen(params, config, num_heads=5, mlp_dim=100)
  assert (wide_config.num_heads, wide_config.mlp_dim) == (5, 100)
  wide = T5Model(wide_config)
  wide.check_params(wide_params)
  assert wide.num_params() > 2 * model.num_params()
  x = jnp.asarray(np.random.default_rng(0).integers(2, 128, (3, 10)), jnp.int32)
  y = jnp.asarray(np.random.default_rng(1).integers(2, 128, (3, 7)), jnp.int32)
  np.testing.assert_allclose(wide.forward(wide_params, x, y), model.forward(params, x, y),
                             atol=1e-5)
  # New heads and units copy real ones (the 3rd head is the 1st again), with zero outputs.
  attn = wide_params["decoder"]["layers_1"]["self_attention"]
  q = attn["query"]["kernel"]
  np.testing.assert_array_equal(q[:, 32:48], q[:, 0:16])
  np.testing.assert_array_equal(q[:, 64:80], q[:, 0:16])
  assert not np.asarray(attn["out"]["kernel"][32:]).any()
  assert not np.asarray(wide_params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"][48:]).any()
  rel = wide_params["decoder"]["relpos_bias"]["rel_embedding"]
  np.testing.assert_array_equal(rel[2:4], rel[0:2])
  # Widening and deepening compose, and the widened model's decode gives the same tokens.
  both_config, both = grow.deepen(wide_params, wide_config, num_decoder_layers=3)
  np.testing.assert_allclose(T5Model(both_config).forward(both, x, y),
                             model.forward(params, x, y), atol=1e-5)
  with pytest.raises(ValueError, match="at least the current widths"):
    grow.widen(params, config, num_heads=1)
  from spec_cascade.models import decoder_configs  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="grows T5 models"):
    grow.widen({}, decoder_configs.get_decoder_config("llama3_1b"), num_heads=8)


def test_kept_layers_are_the_source_layers_and_the_cut_model_runs():
  config = get_config("tiny").replace(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16,
                                      mlp_dim=64, num_encoder_layers=2, num_decoder_layers=3)
  params = T5Model(config).init_params(jax.random.key(0))
  cut_config, cut = grow.keep_layers(params, config, decoder_layers=[2, 0])
  assert (cut_config.num_encoder_layers, cut_config.num_decoder_layers) == (2, 2)
  small = T5Model(cut_config)
  small.check_params(cut)
  same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))
  assert same(cut["decoder"]["layers_0"], params["decoder"]["layers_2"])
  assert same(cut["decoder"]["layers_1"], params["decoder"]["layers_0"])
  assert same(cut["encoder"], params["encoder"]) and same(cut["token_embedder"],
                                                          params["token_embedder"])
  x = jnp.asarray(np.random.default_rng(0).integers(2, 128, (2, 6)), jnp.int32)
  # The encoder is untouched, so the cut model encodes exactly as the source does.
  np.testing.assert_array_equal(small.encode(cut, x)[0], T5Model(config).encode(params, x)[0])
  assert small.forward(cut, x, x).shape == (2, 6, 128)
  for bad in ([], [3], [-1]):
    with pytest.raises(ValueError, match="non-empty list of indices in 0..2"):
      grow.keep_layers(params, config, decoder_layers=bad)


def test_cut_cli_writes_a_loadable_checkpoint(tmp_path):
  config = get_config("tiny").replace(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16,
                                      mlp_dim=64)
  params = T5Model(config).init_params(jax.random.key(0))
  from spec_cascade import checkpoints, exports  # pylint: disable=g-import-not-at-top
  exports.export_params(str(tmp_path / "src"), params, config, None, {})
  assert grow.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "cut"),
                    "--keep_decoder_layers", "1"]) == 0
  cut, cut_config = checkpoints.load_params(str(tmp_path / "cut"))
  assert cut_config.num_decoder_layers == 1
  np.testing.assert_array_equal(cut["decoder"]["layers_0"]["mlp"]["wo"]["kernel"],
                                params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  with pytest.raises(SystemExit):
    grow.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "x"),
               "--keep_decoder_layers", "0", "--num_decoder_layers", "3"])
  assert grow.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "wide"),
                    "--num_heads", "3", "--mlp_dim", "96"]) == 0
  wide, wide_config = checkpoints.load_params(str(tmp_path / "wide"))
  assert (wide_config.num_heads, wide_config.mlp_dim) == (3, 96)
  assert wide["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].shape == (32, 96)


# ---------------------------------------------------------------------------
# The gin entry point

from test_train import _tiny_cli_argv, fake_offline_data  # noqa: E402,F401  (fixture)


def test_cli_distills_with_distill_gin(tmp_path, fake_offline_data):  # noqa: F811
  teacher = _teacher_dir(tmp_path, CFG.replace(dropout_rate=0.0, num_decoder_layers=2))
  model_dir = tmp_path / "run"
  argv = _tiny_cli_argv(model_dir) + [
      "--gin_file=configs/runs/distill.gin", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8",
      "--gin.INITIAL_CHECKPOINT_PATH=None", f"--gin.TEACHER_CHECKPOINT_PATH='{teacher}'",
      "--gin.KD_WEIGHT=0.5", "--gin.KD_DIVERGENCE='reverse_kl'",
      "--gin.SEQUENCE_TARGETS='sample'", "--gin.TEACHER_TEMPERATURE=0.8",
      "--gin.ON_POLICY_FRACTION=0.5", "--gin.EVAL_PERIOD=3", "--gin.EVAL_STEPS=1",
      "--gin.LOG_PERIOD=3", "--gin.CHECKPOINT_PERIOD=3", "--gin.LR_FACTORS='constant'",
      "--gin.LEARNING_RATE=0.01"]
  result = T.main(argv)
  assert result.step == 3 and "eval_acceptance" in result.eval_metrics
  operative = (model_dir / "config.gin").read_text()
  assert "KD_DIVERGENCE = 'reverse_kl'" in operative and "ON_POLICY_FRACTION = 0.5" in operative
  manifest = json.load(open(model_dir / "teacher_targets" / "manifest.json"))
  assert manifest["temperature"] == pytest.approx(0.8) and manifest["teacher"] == teacher
  record = [json.loads(line) for line in open(model_dir / "metrics.jsonl")][0]
  assert {"kd", "acceptance", "agreement"} <= set(record)


# ---------------------------------------------------------------------------
# Stage artifacts

def test_stage_artifact_continues_a_run_at_its_step(tmp_path, tx, monkeypatch):
  from spec_cascade import checkpoints, stages
  from spec_cascade.models import configs
  monkeypatch.setitem(configs.NAMED_CONFIGS, "test_student", STUDENT)
  T.train(model_dir=str(tmp_path / "a"), model=STUDENT, total_steps=4, batch_size=8,
          optimizer=tx, train_source=_source(), eval_steps=0, checkpoint_period=2)
  record = stages.save_stage(str(tmp_path / "a"), str(tmp_path / "stage"), "recipe.gin",
                             "test_student")
  assert record["step"] == 4 and record["recipe"] == "recipe.gin"
  params, config = checkpoints.load_params(str(tmp_path / "stage"))
  assert config == STUDENT
  info = json.load(open(tmp_path / "stage" / T.EXPORT_INFO_FILE))
  assert info["param_dtypes"] == ["bfloat16"] and info["stage"]["step"] == 4
  # The next sitting starts at step 4: the schedule and the data stream go on from there.
  seen = []
  res = T.train(model_dir=str(tmp_path / "b"), model=STUDENT, total_steps=6, batch_size=8,
                optimizer=tx, train_source=_source(), eval_steps=0,
                initial_checkpoint_path=str(tmp_path / "stage"),
                step_callback=lambda s, m: seen.append(s))
  assert seen == [5, 6] and res.step == 6
  saved = json.load(open(tmp_path / "b" / "checkpoints" / "6" / "data" / "metadata"))
  assert saved["position"] == 6
  assert stages.start_step(str(tmp_path / "stage"), 0) == 0  # INITIAL_STEP wins
  with pytest.raises(ValueError, match="INITIAL_STEP"):
    stages.start_step(str(tmp_path / "stage"), -1)
  with pytest.raises(FileNotFoundError, match="no training checkpoints"):
    stages.save_stage(str(tmp_path / "nothing"), str(tmp_path / "s2"), "r.gin", "test_student")
