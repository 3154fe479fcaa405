"""Trainer: data pipeline, loss, schedules, convergence, exact resume, export, errors, CLI."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from device_env import cpu_devices_env
from spec_cascade import gin_cli
from spec_cascade import train as T
from spec_cascade import train_data as D
from spec_cascade.models import T5Model, get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dropout on (as DROPOUT_RATE's default) so that resume also checks the dropout keys.
CFG = get_config("tiny").replace(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16,
                                 mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1,
                                 dropout_rate=0.1)
LENGTHS = {"inputs": 16, "targets": 8}
# Pseudo-words from syllables: enough distinct character n-grams for a 100-piece vocab.
_SYL = "ka to ri mu se lo pa ne di gu ba fe hi jo ve zu wa yo qui str".split()
WORDS = tuple(a + b + c for a in _SYL[:8] for b in _SYL[5:13] for c in ("", "n", "s", "ter"))


class CharTokenizer:
  """ASCII characters → ids 32..126 (never 0/1), the SentencePieceTokenizer interface."""
  vocab_size = 128
  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def synthetic_examples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(2, 9))]
    out.append({"inputs": "summarize: " + " ".join(words), "targets": " ".join(words[:2]),
                "id": str(i)})
  return out


def token_examples(n, seed=0, vocab=CFG.vocab_size):
  """(inputs, targets) int32 lists: target = the first (up to 7) input tokens reversed.
  Tokens follow a Zipf-like law, so even the unigram statistics are learnable."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, vocab - 1)
  ins, tgts = [], []
  for _ in range(n):
    x = (2 + rng.choice(vocab - 2, rng.integers(2, 16), p=p / p.sum())).astype(np.int32)
    ins.append(np.append(x, D.EOS_ID).astype(np.int32))
    tgts.append(np.append(x[:7][::-1], D.EOS_ID).astype(np.int32))
  return ins, tgts


@pytest.fixture(scope="module")
def tx():
  # The jitted steps are cached per (config, optimizer); make_optimizer returns the
  # same object for the same settings (also when gin calls it, as in the CLI test).
  return T.make_optimizer("adafactor", T.create_learning_rate_schedule("constant", 0.01))


def _sources(batch_size=8, n=96, seed=0):
  ins, tgts = token_examples(n, seed)
  train = D.OfflineBatches(ins, tgts, batch_size, LENGTHS, seed=seed, window_batches=4)
  ev_in, ev_tgt = token_examples(12, seed + 1)
  return train, D.OfflineBatches(ev_in, ev_tgt, batch_size, LENGTHS, shuffle=False)


# ---------------------------------------------------------------------------
# Data

def test_tokenize_truncates_counts_and_appends_eos():
  examples = [{"inputs": "x" * 30, "targets": "y" * 3}, {"inputs": "ab", "targets": "z" * 9},
              {"inputs": "", "targets": "ok"}]
  ins, tgts, stats = D.tokenize_examples(examples, CharTokenizer(), {"inputs": 10,
                                                                     "targets": 5})
  assert [len(x) for x in ins] == [10, 3, 1] and [len(x) for x in tgts] == [4, 5, 3]
  assert all(x[-1] == D.EOS_ID and (x[:-1] > 1).all() for x in ins + tgts)
  assert (stats.examples, stats.inputs_truncated, stats.targets_truncated) == (3, 1, 1)
  assert (stats.inputs_tokens_dropped, stats.targets_tokens_dropped) == (21, 5)
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
    D.tokenize_examples(examples, CharTokenizer(), {"inputs": 10})


def test_sentencepiece_tokenizer_path(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  sentences = [ex["inputs"] + " " + ex["targets"] for ex in synthetic_examples(300)]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences),
                                 model_prefix=str(tmp_path / "sp"), vocab_size=100,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 minloglevel=2)
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
  tok = types.SimpleNamespace(encode=sp.encode, decode=sp.decode,
                              vocab_size=sp.get_piece_size())
  examples = synthetic_examples(40, seed=1)
  ins, tgts, stats = D.tokenize_examples(examples, tok, {"inputs": 64, "targets": 16})
  assert stats.inputs_truncated == 0
  assert [sp.decode(x[:-1].tolist()) for x in ins] == [ex["inputs"] for ex in examples]
  source = D.OfflineBatches(ins, tgts, 8, {"inputs": 64, "targets": 16}, seed=0)
  batch = source.batch_at(0)
  assert batch["encoder_input_tokens"].shape[0] == 8
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  assert (batch["decoder_input_tokens"][:, 0] == 0).all()
  np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                batch["decoder_target_tokens"] > 0)


def test_offline_batches_are_deterministic_resumable_and_cover_each_epoch():
  ins, tgts = token_examples(200, seed=3)
  lengths = {"inputs": 16, "targets": 8}
  a = D.OfflineBatches(ins, tgts, 10, lengths, seed=7, window_batches=3)
  b = D.OfflineBatches(ins, tgts, 10, lengths, seed=7, window_batches=3)
  assert a.batches_per_epoch == 20
  # Position p is a pure function of (data, seed, p): a resumed iterator continues exactly.
  it = a.iterate(0)
  stream = [next(it) for _ in range(45)]
  resumed = b.iterate(33)
  for p in range(33, 45):
    got = next(resumed)
    for k in D.FEATURE_KEYS:
      np.testing.assert_array_equal(got[k], stream[p][k])
  # Each epoch visits every example exactly once (200 = 20 batches of 10).
  for epoch in (0, 1):
    seen = np.concatenate([a.batch_indices(epoch * 20 + i) for i in range(20)])
    assert sorted(seen.tolist()) == list(range(200))
  assert not np.array_equal(a.batch_indices(0), a.batch_indices(20))  # reshuffled
  c = D.OfflineBatches(ins, tgts, 10, lengths, seed=8, window_batches=3)
  assert any(not np.array_equal(a.batch_indices(i), c.batch_indices(i)) for i in range(5))
  # Shapes come from the bucket boundaries.
  shapes = {(a.batch_at(i)["encoder_input_tokens"].shape[1],
             a.batch_at(i)["decoder_target_tokens"].shape[1]) for i in range(20)}
  assert shapes <= {(s, t) for s in a.input_boundaries for t in a.target_boundaries}


def test_bucketing_reduces_padding():
  rng = np.random.default_rng(0)
  # Skewed lengths like the offline mix: many short sentences, some long paragraphs.
  lens = np.where(rng.random(2000) < 0.7, rng.integers(5, 20, 2000), rng.integers(40, 129, 2000))
  ins = [np.full(n, 5, np.int32) for n in lens]
  tgts = [np.full(max(2, n // 3), 5, np.int32) for n in lens]
  lengths = {"inputs": 128, "targets": 64}
  bucketed = D.OfflineBatches(ins, tgts, 64, lengths, seed=0)
  fixed = D.OfflineBatches(ins, tgts, 64, lengths, seed=0, bucket=False)
  assert fixed.padding_fraction() > 0.55
  assert bucketed.padding_fraction() < 0.5 * fixed.padding_fraction()


def test_equal_rate_mixture_upsamples_smaller_tasks():
  big = [{"task": "a", "id": str(i)} for i in range(10)]
  small = [{"task": "b", "id": str(i)} for i in range(4)]
  mixed = D.equal_rate_mixture([big, small], seed=0)
  assert sum(ex["task"] == "a" for ex in mixed) == sum(ex["task"] == "b" for ex in mixed) == 10
  counts = np.bincount([int(ex["id"]) for ex in mixed if ex["task"] == "b"])
  assert sorted(counts.tolist()) == [2, 2, 3, 3]  # 2 full repeats + 2 distinct extras
  assert mixed == D.equal_rate_mixture([big, small], seed=0)


def test_eval_batches_are_one_padded_pass():
  ins, tgts = token_examples(21, seed=4)
  source = D.OfflineBatches(ins, tgts, 8, LENGTHS, shuffle=False)
  batches = list(source.iterate(0))
  assert len(batches) == 3
  total = sum(float(b["decoder_loss_weights"].sum()) for b in batches)
  assert total == sum(len(t) for t in tgts)
  assert (batches[-1]["encoder_input_tokens"].sum(1) == 0).sum() == 3  # padding rows


# ---------------------------------------------------------------------------
# Loss and schedules

def test_loss_sums_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32) * 3
  targets = np.array([[1, 2, 0], [4, 4, 3]])
  weights = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  got = jax.device_get(T.loss_sums(jnp.asarray(logits), jnp.asarray(targets),
                                   jnp.asarray(weights), 1e-4))
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  tl = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(got["cross_entropy"], ((log_z - tl) * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(got["z_loss"], (1e-4 * log_z ** 2 * weights).sum(), rtol=1e-5)
  assert got["weight"] == 5
  assert got["correct"] == ((logits.argmax(-1) == targets) * weights).sum()


def test_learning_rate_schedules():
  s = T.create_learning_rate_schedule("constant * linear_warmup * rsqrt_decay", 1.0, 100)
  np.testing.assert_allclose([s(0), s(50), s(100), s(400)], [0, 0.05, 0.1, 0.05], rtol=1e-6)
  s = T.create_learning_rate_schedule("constant * rsqrt_decay", 1.0, 10000)
  np.testing.assert_allclose(s(0), 0.01, rtol=1e-6)  # T5's pre-training schedule
  s = T.create_learning_rate_schedule("constant * linear_warmup * cosine_decay", 2.0, 10,
                                      decay_steps=110)
  np.testing.assert_allclose([s(5), s(10), s(60), s(110), s(500)], [1, 2, 1, 0, 0], atol=1e-6)
  with pytest.raises(ValueError, match="Unknown learning-rate factors"):
    T.create_learning_rate_schedule("constant * exp_decay")
  with pytest.raises(ValueError, match="decay_steps"):
    T.create_learning_rate_schedule("constant * cosine_decay", 1.0, 10)
  with pytest.raises(ValueError, match="adafactor"):
    T.make_optimizer("sgd")


# ---------------------------------------------------------------------------
# Training

def test_few_steps_reduce_loss(tmp_path, tx):
  train, ev = _sources()
  losses = []
  result = T.train(model_dir=str(tmp_path / "m"), model=CFG, total_steps=30, batch_size=8,
                   optimizer=tx, train_source=train, eval_source=ev, checkpoint_period=100,
                   eval_period=30, log_period=10,
                   step_callback=lambda s, m: losses.append(float(m["loss"])))
  assert len(losses) == 30 and result.step == 30
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
  assert np.isfinite(result.eval_metrics["eval_loss"])
  assert result.eval_metrics["eval_loss"] < losses[0] - 0.3
  records = [json.loads(line) for line in open(tmp_path / "m" / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == [10, 20, 30]
  assert all(r["examples_per_s"] > 0 for r in records if r["kind"] == "train")
  # The same scalars as TensorBoard summaries (train/ and eval/ under MODEL_DIR).
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  runs = {}
  for kind in ("train", "eval"):
    acc = event_accumulator.EventAccumulator(str(tmp_path / "m" / kind))
    acc.Reload()  # TF2 summaries arrive as scalar tensors
    runs[kind] = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                        for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}
  # (learning_rate is NaN here, an optimizer given without its schedule: left out)
  assert {"loss", "accuracy", "examples_per_s"} <= set(runs["train"])
  train_records = [r for r in records if r["kind"] == "train"]
  assert [step for step, _ in runs["train"]["loss"]] == [r["step"] for r in train_records]
  assert [v for _, v in runs["train"]["loss"]] == pytest.approx(
      [r["loss"] for r in train_records], rel=1e-6)
  assert [s for s, _ in runs["eval"]["eval_loss"]] == [30]


def _flat(tree):
  return jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]


class Killed(Exception):
  """A run dying mid-training (`kill_at_5`)."""


def kill_at_5(step, metrics):
  del metrics
  if step == 5:
    raise Killed


def test_kill_and_resume_is_exact(tmp_path, tx):
  common = dict(model=CFG, total_steps=8, batch_size=8, optimizer=tx, checkpoint_period=3,
                eval_period=100, eval_steps=0, log_period=4)
  ref_losses = {}
  ref = T.train(model_dir=str(tmp_path / "ref"), train_source=_sources()[0],
                step_callback=lambda s, m: ref_losses.setdefault(s, float(m["loss"])), **common)

  with pytest.raises(Killed):  # steps 4 and 5 are lost: the last checkpoint is step 3
    T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0],
            step_callback=kill_at_5, **common)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3"]
  saved = json.load(open(tmp_path / "run" / "checkpoints" / "3" / "data" / "metadata"))
  assert saved["position"] == 3
  resumed_losses = {}
  res = T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0],
                step_callback=lambda s, m: resumed_losses.setdefault(s, float(m["loss"])),
                **common)
  assert sorted(resumed_losses) == [4, 5, 6, 7, 8]  # restarted exactly after step 3
  for s in resumed_losses:
    assert resumed_losses[s] == ref_losses[s], (s, resumed_losses[s], ref_losses[s])
  for (path, a), (_, b) in zip(_flat(ref.params) + _flat(ref.opt_state),
                               _flat(res.params) + _flat(res.opt_state)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # keep_checkpoints=3 and the final step is always saved.
  assert sorted(map(int, os.listdir(tmp_path / "run" / "checkpoints"))) == [3, 6, 8]
  # A run that already reached TRAIN_STEPS only re-exports.
  again = T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0], **common)
  assert again.step == 8


def test_stop_request_saves_then_resume_is_exact(tmp_path, tx):
  # What SIGTERM/SIGINT do in the CLI (`scripts/train_offline_pair.sh --stop`): finish the
  # step, save it even between checkpoint periods, raise TrainingStopped; nothing is lost.
  common = dict(model=CFG, total_steps=8, batch_size=8, optimizer=tx, checkpoint_period=3,
                eval_period=100, eval_steps=0, log_period=4)
  ref = T.train(model_dir=str(tmp_path / "ref"), train_source=_sources()[0], **common)

  seen = []

  def stop_at_5(step, metrics):
    # A stop waits for one step only: the step before this one has already finished.
    assert not seen or all(x.is_ready() for x in jax.tree_util.tree_leaves(seen[-1]))
    seen.append(metrics)
    if step == 5:
      T.STOP_REQUESTED.set()

  try:
    with pytest.raises(T.TrainingStopped, match="step 5"):
      T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0],
              step_callback=stop_at_5, **common)
  finally:
    T.STOP_REQUESTED.clear()
  assert sorted(map(int, os.listdir(tmp_path / "run" / "checkpoints"))) == [3, 5]
  assert not (tmp_path / "run" / "export").exists()
  resumed = []
  res = T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0],
                step_callback=lambda s, m: resumed.append(s), **common)
  assert resumed == [6, 7, 8]
  for (path, a), (_, b) in zip(_flat(ref.params), _flat(res.params)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_frozen_params_keep_their_values_and_resume_exactly(tmp_path, tx):
  """FROZEN_PARAMS: a drafter cut from its verifier trains its decoder while its embedding
  and encoder stay the verifier's (so the engine can encode once); a stopped run resumes to
  the same parameters."""
  from spec_cascade import checkpoints
  start = T5Model(CFG).init_params(jax.random.key(3))
  checkpoints.save_checkpoint(str(tmp_path / "start"), start, CFG)
  frozen = ["token_embedder/.*", "encoder/.*"]
  common = dict(model=CFG, total_steps=6, batch_size=8, optimizer=tx, checkpoint_period=3,
                eval_period=100, eval_steps=0, initial_checkpoint_path=str(tmp_path / "start"),
                frozen_params=frozen)
  ref = T.train(model_dir=str(tmp_path / "ref"), train_source=_sources()[0], **common)
  before = flax.traverse_util.flatten_dict(jax.device_get(start), sep="/")
  after = flax.traverse_util.flatten_dict(jax.device_get(ref.params), sep="/")
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed and all(k.startswith("decoder/") for k in changed), sorted(changed)
  assert not any(k.startswith(("encoder/", "token_embedder/")) for k in changed)

  with pytest.raises(Killed):
    T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0],
            step_callback=kill_at_5, **common)
  res = T.train(model_dir=str(tmp_path / "run"), train_source=_sources()[0], **common)
  for (path, a), (_, b) in zip(_flat(ref.params), _flat(res.params)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  with pytest.raises(ValueError, match="'encoderr/.*' matches no parameter"):
    T.train(model_dir=str(tmp_path / "typo"), train_source=_sources()[0],
            **{**common, "frozen_params": ["encoderr/.*"]})
  with pytest.raises(ValueError, match="list of patterns"):
    T.train(model_dir=str(tmp_path / "str"), train_source=_sources()[0],
            **{**common, "frozen_params": "encoder/.*"})


def test_export_roundtrip_and_initial_checkpoint_errors(tmp_path, tx, monkeypatch):
  train, _ = _sources()
  res = T.train(model_dir=str(tmp_path / "m"), model=CFG, total_steps=2, batch_size=8,
                optimizer=tx, train_source=train, eval_steps=0, checkpoint_period=100)
  config, params = T.load_exported(tmp_path / "m")
  assert config == CFG
  for (path, a), (_, b) in zip(_flat(res.params), _flat(params)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  info = json.load(open(tmp_path / "m" / "export" / T.EXPORT_INFO_FILE))
  assert info["step"] == 2 and info["t5_config"]["emb_dim"] == 32
  assert info["format"] == "spec_cascade.orbax"  # spec_cascade.checkpoints' own layout
  try:
    from spec_cascade import checkpoints
  except ImportError:
    checkpoints = None
  if checkpoints is not None:  # once merged: the inference loader reads the export
    loaded, loaded_config = checkpoints.load_params(str(tmp_path / "m" / "export"))
    assert loaded_config == CFG
    for (path, a), (_, b) in zip(_flat(loaded), _flat(params)):
      np.testing.assert_array_equal(a, b)
  # Fine-tuning from the export: step 0, parameters from the export.
  model = T5Model(CFG)
  start = T.load_initial_params(str(tmp_path / "m" / "export"), model)
  for (path, a), (_, b) in zip(_flat(start), _flat(params)):
    np.testing.assert_array_equal(a, b)
  # A checkpoint whose shapes do not fit the model names the parameter.
  wider = T5Model(CFG.replace(mlp_dim=96))
  with pytest.raises(ValueError, match=r"INITIAL_CHECKPOINT_PATH.*mlp/wi_0/kernel"):
    T.train(model_dir=str(tmp_path / "ft"), model=wider.config, total_steps=1, batch_size=8,
            train_source=train, initial_checkpoint_path=str(tmp_path / "m"), eval_steps=0)
  # An empty T5X-style folder: the layout error names what was expected.
  t5x_dir = tmp_path / "checkpoint_1000"
  t5x_dir.mkdir()
  with pytest.raises(ValueError, match="Unknown checkpoint layout"):
    T.load_initial_params(str(t5x_dir), model)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    T.load_initial_params(str(tmp_path / "nope"), model)


def test_bad_model_dir_and_settings(tmp_path):
  train, _ = _sources()
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="MODEL_DIR .* is not writable"):
    T.train(model_dir=str(blocker / "sub"), model=CFG, total_steps=1, batch_size=8,
            train_source=train)
  with pytest.raises(ValueError, match="BATCH_SIZE"):
    T.train(model_dir=str(tmp_path / "m"), model=CFG, total_steps=1, batch_size=0,
            train_source=train)
  with pytest.raises(ValueError, match="MIXTURE_OR_TASK_NAME"):
    T.train(model_dir=str(tmp_path / "m"), model=CFG, total_steps=1, batch_size=8)
  with pytest.raises(ValueError, match="Only 5 training examples"):
    D.OfflineBatches(*token_examples(5), 8, LENGTHS)


# ---------------------------------------------------------------------------
# Command line through the offline-data path (spec_cascade.data API stood in by
# small modules with the same functions, backed by a real SentencePiece model)

@pytest.fixture
def fake_offline_data(tmp_path, monkeypatch):
  spm = pytest.importorskip("sentencepiece")
  sentences = [ex["inputs"] + " " + ex["targets"] for ex in synthetic_examples(300)]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences),
                                 model_prefix=str(tmp_path / "sp"), vocab_size=100,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)

  class SentencePieceTokenizer:
    def __init__(self, path):
      self._sp = spm.SentencePieceProcessor(model_file=path)
      self.vocab_size, self.eos_id, self.pad_id = self._sp.get_piece_size(), 1, 0

    def encode(self, text):
      return self._sp.encode(text)

    def decode(self, ids):
      return self._sp.decode(list(ids))

  splits = {"train": synthetic_examples(64, seed=5), "validation": synthetic_examples(16, 6)}
  offline = types.ModuleType("spec_cascade.data.offline")
  offline.load_split = lambda task, split, cache_dir=None: [
      dict(ex, id=f"{task}-{ex['id']}") for ex in splits[split]]
  vocab = types.ModuleType("spec_cascade.data.vocab")

  def get_vocab_path(cache_dir=None):
    # The real data modules declare gin configurables when first imported, which
    # happens lazily, after the CLI parsed the gin files: that must be allowed.
    import gin
    gin.configurable(f"settings_{tmp_path.name}", module="fake_data")(lambda: None)
    return tmp_path / "sp.model"

  vocab.get_vocab_path = get_vocab_path
  vocab.SentencePieceTokenizer = SentencePieceTokenizer
  try:
    import spec_cascade.data as data_pkg  # the real package, once merged
  except ImportError:
    data_pkg = types.ModuleType("spec_cascade.data")
    data_pkg.__path__ = []
    monkeypatch.setitem(sys.modules, "spec_cascade.data", data_pkg)
  for name, mod in (("offline", offline), ("vocab", vocab)):
    monkeypatch.setitem(sys.modules, f"spec_cascade.data.{name}", mod)
    monkeypatch.setattr(data_pkg, name, mod, raising=False)
  yield
  import gin
  gin.clear_config()


def _tiny_cli_argv(model_dir) -> list[str]:
  """CLI flags for a tiny model on the (fake) offline mixture; add TRAIN_STEPS etc."""
  return [
      "--gin_file=configs/runs/finetune.gin", f"--gin_search_paths={ROOT}",
      "--gin.MODEL=@models.get_config()", "--gin.models.get_config.name='tiny'",
      "--gin.models.get_config.vocab_size=128", "--gin.models.get_config.emb_dim=32",
      "--gin.models.get_config.num_heads=2", "--gin.models.get_config.head_dim=16",
      "--gin.models.get_config.mlp_dim=64", "--gin.models.get_config.num_encoder_layers=1",
      "--gin.models.get_config.num_decoder_layers=1",
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='debian_mix'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}"]


def test_cli_trains_offline_mixture_and_writes_config(tmp_path, fake_offline_data):
  model_dir = tmp_path / "run"
  argv = _tiny_cli_argv(model_dir) + [
      "--gin.TRAIN_STEPS=4",
      "--gin.BATCH_SIZE=8", "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.EVAL_PERIOD=4",
      "--gin.EVAL_STEPS=1", "--gin.INFER_EVAL_EXAMPLES=2", "--gin.CHECKPOINT_PERIOD=2",
      "--gin.LOG_PERIOD=2", "--gin.LR_FACTORS='constant'", "--gin.LEARNING_RATE=0.01",
      "--alsologtostderr"]
  result = T.main(argv)
  assert result.step == 4
  operative = (model_dir / "config.gin").read_text()
  assert "TRAIN_STEPS = 4" in operative and "'debian_mix'" in operative
  assert "OPTIMIZER = 'adafactor'" in operative and "LEARNING_RATE = 0.01" in operative
  assert set(result.eval_metrics) >= {"eval_loss", "eval_accuracy",
                                      "debian_ende/exact_match",
                                      "debian_summarize/exact_match"}
  config, _ = T.load_exported(model_dir)
  assert config.emb_dim == 32 and config.dropout_rate == 0.1  # DROPOUT_RATE applied
  with pytest.raises(gin_cli.FlagError, match="--gin.NAME=VALUE"):
    T.parse_flags(["--gin_file=x.gin", "--gin.MODEL_DIR"])  # missing '=VALUE'


def test_cli_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, fake_offline_data):
  model_dir = tmp_path / "run"
  argv = _tiny_cli_argv(model_dir) + [
      "--gin.TRAIN_STEPS=100000",
      "--gin.BATCH_SIZE=8", "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.EVAL_PERIOD=100000",
      "--gin.CHECKPOINT_PERIOD=100000", "--gin.LOG_PERIOD=1"]
  metrics = model_dir / "metrics.jsonl"

  def kill_once_training():
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  killer = threading.Thread(target=kill_once_training)
  killer.start()
  with pytest.raises(SystemExit) as exit_info:
    T.main(argv)
  killer.join()
  assert exit_info.value.code == 128 + signal.SIGTERM
  steps = [int(d) for d in os.listdir(model_dir / "checkpoints")]
  assert len(steps) == 1 and 1 <= steps[0] < 100000  # saved between checkpoint periods
  assert signal.getsignal(signal.SIGTERM) == before and not T.STOP_REQUESTED.is_set()


def test_tokenizer_larger_than_model_vocab_is_rejected(tmp_path, fake_offline_data):
  with pytest.raises(ValueError, match="vocab_size"):
    T.train(model_dir=str(tmp_path / "m"), model=CFG.replace(vocab_size=64), total_steps=1,
            batch_size=8, mixture_or_task_name="debian_ende", task_feature_lengths=LENGTHS,
            eval_steps=0)


# ---------------------------------------------------------------------------
# Slow: seqio registry lookup, multi-device data parallelism (subprocesses)

@pytest.mark.slow
def test_unknown_task_name_is_a_clear_error(tmp_path):
  pytest.importorskip("seqio")
  with pytest.raises(ValueError, match="Unknown MIXTURE_OR_TASK_NAME 'no_such_task'"):
    T.train(model_dir=str(tmp_path / "m"), model=CFG, total_steps=1, batch_size=8,
            mixture_or_task_name="no_such_task", task_feature_lengths=LENGTHS)


_DP_SCRIPT = """
import json, sys, numpy as np, jax
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
from tests.test_train import CFG, _sources
from spec_cascade import train as T
tx = T.make_optimizer("adafactor", T.create_learning_rate_schedule("constant", 0.01))
losses = []
T.train(model_dir={model_dir!r}, model=CFG, total_steps=3, batch_size=8, optimizer=tx,
        train_source=_sources()[0], eval_steps=0, log_period=1,
        step_callback=lambda s, m: losses.append(float(m["loss"])))
print(json.dumps({{"devices": jax.device_count(), "losses": losses}}))
"""


@pytest.mark.slow
def test_data_parallel_over_two_devices_matches_one(tmp_path):
  out = {}
  for n in (1, 2):
    env = cpu_devices_env(n)
    script = _DP_SCRIPT.format(root=ROOT, model_dir=str(tmp_path / f"d{n}"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out[2]["devices"] == 2
  np.testing.assert_allclose(out[2]["losses"], out[1]["losses"], rtol=1e-5)
