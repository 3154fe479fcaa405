"""`spec_cascade.train` as a simulated 2-process × 2-device pod against one process: the same
global batches, one writer, Orbax checkpoints saved by every process, and a pod killed after
its step-10 checkpoint resumes to the parameters one process reaches.

Every simulated pod talks over 127.0.0.1 on a free port and is stopped by a timeout."""
import json
import os
import re
import signal
import sys
import threading
import time

import gin
import jax
import numpy as np
import pytest

import sweep_helpers
from spec_cascade import simulate_pod
from spec_cascade import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "debian_ende"
POD_TIMEOUT_S = 240  # a whole simulated run, start-up and compilation included
STEPS, CHECKPOINT_PERIOD, LOG_PERIOD = 20, 10, 5


def test_batch_size_that_does_not_split_over_the_mesh_says_what_to_use():
  T.check_batch_size(8, 4, 2)
  with pytest.raises(ValueError, match=r"BATCH_SIZE=6 must be a multiple of the 4 devices "
                                       r"of the data-parallel mesh \(2 processes × 2 devices\)"
                                       r".*--gin.BATCH_SIZE=8"):
    T.check_batch_size(6, 4, 2)
  with pytest.raises(ValueError, match=r"\(3 devices\).*--gin.BATCH_SIZE=9"):
    T.check_batch_size(8, 3)


@pytest.fixture
def offline(tmp_path_factory, monkeypatch):
  return sweep_helpers.session_env(tmp_path_factory, monkeypatch, False, REPO)


def _flags(model_dir, env):
  """A tiny model on the offline corpora. Fixed shapes (no length buckets) keep compilation to
  one train step; the eval after the step-10 checkpoint compiles the eval step and the greedy
  decode, which leaves seconds to kill the pod before it could save step 20."""
  return [
      "--gin_file=configs/runs/finetune.gin", f"--gin_search_paths={REPO}",
      "--gin.MODEL=@models.get_config()", "--gin.models.get_config.name='tiny'",
      # The test tokenizer has 300 ids.
      "--gin.models.get_config.vocab_size=384", "--gin.models.get_config.emb_dim=32",
      "--gin.models.get_config.num_heads=2", "--gin.models.get_config.head_dim=16",
      "--gin.models.get_config.mlp_dim=64", "--gin.models.get_config.num_encoder_layers=1",
      "--gin.models.get_config.num_decoder_layers=1",
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
      f"--gin.train_script.train.vocab_path='{env.vocab}'",
      f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8", "--gin.INITIAL_CHECKPOINT_PATH=None",
      f"--gin.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}", f"--gin.EVAL_PERIOD={CHECKPOINT_PERIOD}",
      "--gin.EVAL_STEPS=1", "--gin.INFER_EVAL_EXAMPLES=2", f"--gin.LOG_PERIOD={LOG_PERIOD}",
      "--gin.LR_FACTORS='constant'", "--gin.LEARNING_RATE=0.01", "--gin.BUCKET_BY_LENGTH=False"]


def _train_records(model_dir):
  with open(model_dir / "metrics.jsonl", encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["kind"] == "train"]


def _start_pod(command, log_dir):
  """simulate_pod.run in a thread, so that the test can watch the run and kill a process."""
  result = {}
  thread = threading.Thread(target=lambda: result.setdefault("code", simulate_pod.run(
      2, 2, command, str(log_dir), timeout_s=POD_TIMEOUT_S, echo=False)), daemon=True)
  thread.start()
  return thread, result


def _logs(log_dir):
  return {p.name: p.read_text()[-3000:] for p in log_dir.glob("*.log")}


@pytest.mark.slow
def test_train_as_a_pod_killed_and_resumed_matches_one_process(offline, tmp_path):
  """(a) One process on one device trains 20 steps → params A. (b) A 2 × 2 pod trains the same
  run; process 1 is SIGKILLed once the step-10 checkpoint exists, the launcher stops process 0;
  the pod started again resumes from step 10 and exports step 20 → params B ≈ A."""
  try:
    one = T.main(_flags(tmp_path / "one", offline))
  finally:
    gin.clear_config()
  assert one.step == STEPS

  out = tmp_path / "pod"
  command = [sys.executable, "-m", "spec_cascade.train", *_flags(out, offline)]
  thread, first = _start_pod(command, tmp_path / "logs1")
  ten = out / "checkpoints" / str(CHECKPOINT_PERIOD)
  deadline = time.time() + POD_TIMEOUT_S
  # Orbax writes this file last, once every process has written its part (and then renames
  # the folder to its step, where renames are atomic).
  while not (ten / "commit_success.txt").exists():
    assert thread.is_alive(), (first, _logs(tmp_path / "logs1"))
    assert time.time() < deadline
    time.sleep(0.05)
  os.kill(int((tmp_path / "logs1" / "process_1.pid").read_text()), signal.SIGKILL)
  thread.join(120)
  assert not thread.is_alive() and first["code"] == -signal.SIGKILL, _logs(tmp_path / "logs1")
  finalized = sorted(int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit())
  assert finalized == [CHECKPOINT_PERIOD], f"the kill came too late to test a resume: {finalized}"
  assert not (out / "export").exists()

  thread, second = _start_pod(command, tmp_path / "logs2")
  thread.join(POD_TIMEOUT_S + 30)
  logs = _logs(tmp_path / "logs2")
  assert second.get("code") == 0, logs
  # Resumed from the checkpoint, not from scratch: the log says so, and the training records
  # of the two runs continue each other (a fresh start would log steps 5 and 10 again).
  assert f"{CHECKPOINT_PERIOD} (data position {CHECKPOINT_PERIOD})" in logs["process_0.log"]
  assert f"steps {CHECKPOINT_PERIOD} → {STEPS}" in logs["process_0.log"]
  records = _train_records(out)
  assert [r["step"] for r in records] == list(range(LOG_PERIOD, STEPS + 1, LOG_PERIOD))
  # One writer: process 1 wrote no second copy of any record, and the same global batches
  # gave the same losses as one process.
  reference = _train_records(tmp_path / "one")
  np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in reference],
                             rtol=1e-5)
  assert ((out / "config.gin").read_text().replace(str(out), "DIR") ==
          (tmp_path / "one" / "config.gin").read_text().replace(str(tmp_path / "one"), "DIR"))

  config, params = T.load_exported(out)
  assert config == T.load_exported(tmp_path / "one")[0]
  a = jax.tree_util.tree_flatten_with_path(jax.device_get(one.params))[0]
  b = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  assert [p for p, _ in a] == [p for p, _ in b]
  # 4 devices sum the gradients in another order than one device: float32 rounding, measured at
  # most 5e-7 after 20 steps. The tolerance is still tight enough to see a wrong resume: one
  # extra step moves every parameter tensor by at least 9e-4, another data seed by 0.1.
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_the_whole_pod_at_one_saved_step(offline, tmp_path):
  """A preemption notice reaches one host: every process stops after the same step, saves
  it together (between checkpoint periods) and exits 143, so nothing is lost or half-saved."""
  out, log_dir = tmp_path / "pod", tmp_path / "logs"
  flags = _flags(out, offline) + ["--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=100000",
                                  "--gin.EVAL_PERIOD=100000", "--gin.LOG_PERIOD=1"]
  thread, result = _start_pod([sys.executable, "-m", "spec_cascade.train", *flags], log_dir)
  deadline = time.time() + POD_TIMEOUT_S
  while not ((out / "metrics.jsonl").exists() and _train_records(out)):
    assert thread.is_alive(), (result, _logs(log_dir))
    assert time.time() < deadline
    time.sleep(0.05)
  os.kill(int((log_dir / "process_1.pid").read_text()), signal.SIGTERM)
  thread.join(120)
  logs = _logs(log_dir)
  assert not thread.is_alive() and result["code"] == 128 + signal.SIGTERM, logs
  saved = {name: re.findall(r"Stop requested: saved step (\d+)", text)
           for name, text in logs.items()}
  assert saved["process_0.log"] == saved["process_1.log"] and len(saved["process_0.log"]) == 1
  step = int(saved["process_0.log"][0])
  assert sorted(os.listdir(out / "checkpoints")) == [str(step)]
  assert (out / "checkpoints" / str(step) / "commit_success.txt").exists()
  assert not (out / "export").exists()
