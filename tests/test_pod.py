"""Multi-host runs rehearsed on this machine (spec_cascade.pod, spec_cascade.simulate_pod):
pod settings and their errors, shares of a split, the launcher, and entry points run as a
2-process pod against one process.

Every simulated pod talks over 127.0.0.1 on a free port and is stopped by a timeout."""
import json
import os
import sys
import time

import numpy as np
import pytest

import sweep_helpers
from spec_cascade import infer, pod, pretrained, simulate_pod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "debian_ende"
POD_TIMEOUT_S = 420  # a whole simulated run, start-up and compilation included


# ----------------------------------------------------------------------------------------------
# Settings, shares, the launcher (fast).

@pytest.mark.parametrize("flags,env,match", [
    ({"num_processes": 2, "process_id": 0}, {}, "need --coordinator_address"),
    ({"coordinator_address": "localhost"}, {}, "must be HOST:PORT"),
    ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2}, {}, "without --process_id"),
    ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, {},
     r"process_id=2 must lie in \[0, num_processes=2\)"),
    ({}, {pod.ENV_COORDINATOR: "127.0.0.1:1234", pod.ENV_NUM_PROCESSES: "two",
          pod.ENV_PROCESS_ID: "0"}, "JAX_NUM_PROCESSES='two' must be an integer"),
])
def test_pod_settings_refuse_what_cannot_describe_a_pod(flags, env, match):
  args = type("Args", (), dict(flags))()
  with pytest.raises(pod.PodError, match=match):
    pod.settings_from(args, env)


def test_pod_settings_from_flags_or_the_environment():
  assert not pod.settings_from(None, {}).multihost
  from_env = pod.settings_from(None, {pod.ENV_COORDINATOR: "127.0.0.1:9", pod.ENV_PROCESS_ID: "1",
                                      pod.ENV_NUM_PROCESSES: "2", pod.ENV_TIMEOUT: "7"})
  assert from_env == pod.PodSettings("127.0.0.1:9", 2, 1, False, 7)
  args = type("Args", (), {"coordinator_address": "10.0.0.2:8476", "num_processes": 4,
                           "process_id": 0, "multiprocess": False, "pod_timeout_s": None})()
  # Flags win over the environment.
  assert pod.settings_from(args, {pod.ENV_PROCESS_ID: "3"}) == pod.PodSettings(
      "10.0.0.2:8476", 4, 0, False, pod.DEFAULT_TIMEOUT_S)
  assert pod.settings_from(None, {pod.ENV_MULTIHOST: "1"}).auto


@pytest.mark.parametrize("n,count", [(0, 2), (1, 2), (7, 2), (7, 3), (12, 4), (5, 8)])
def test_shares_cover_the_split_once_and_interleave_back_in_order(n, count):
  shares = [pod.shard_of(n, i, count).tolist() for i in range(count)]
  assert sorted(sum(shares, [])) == list(range(n))
  assert pod.interleave_shares(shares) == list(range(n))


def test_single_process_helpers_need_no_pod():
  assert pod.allgather_objects({"a": [1]}) == [{"a": [1]}]
  assert pod.broadcast_object("x") == "x" and pod.is_writer()
  assert pod.run_on_writer(lambda: 5) == 5
  with pytest.raises(ValueError, match="boom"):
    pod.run_on_writer(lambda: (_ for _ in ()).throw(ValueError("boom")))
  np.testing.assert_array_equal(pod.to_host(np.arange(3)), np.arange(3))


def test_process_env_gives_each_process_its_place():
  env = simulate_pod.process_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"},
                                 4321, 3, 2, 2, 30)
  assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=2"
  assert (env[pod.ENV_COORDINATOR], env[pod.ENV_NUM_PROCESSES], env[pod.ENV_PROCESS_ID],
          env[pod.ENV_TIMEOUT]) == ("127.0.0.1:4321", "3", "2", "30")


def test_launcher_stops_everyone_when_one_process_fails(tmp_path):
  """Process 1 fails at once; process 0 would sleep for a minute: the launcher stops it and
  returns process 1's status within seconds, with each process's log kept."""
  script = ("import os, sys, time\n"
            "if os.environ['JAX_PROCESS_ID'] == '1':\n"
            "  print('process 1 gives up', flush=True); sys.exit(3)\n"
            "print('process 0 waits', flush=True); time.sleep(60)\n")
  t0 = time.time()
  code = simulate_pod.run(2, 1, [sys.executable, "-c", script], str(tmp_path), echo=False)
  assert code == 3 and time.time() - t0 < 30
  assert "gives up" in (tmp_path / "process_1.log").read_text()
  assert "waits" in (tmp_path / "process_0.log").read_text()


def test_launcher_timeout_stops_a_hung_pod(tmp_path):
  code = simulate_pod.run(2, 1, [sys.executable, "-c", "import time; time.sleep(60)"],
                          str(tmp_path), timeout_s=2, echo=False)
  assert code == 124


def test_launcher_refuses_a_pod_without_a_command(capsys):
  assert simulate_pod.main(["2", "2"]) == 2
  assert "no command" in capsys.readouterr().err


@pytest.mark.slow
def test_a_coordinator_that_never_answers_is_an_error_in_bounded_time(tmp_path):
  """Process 1 of 2 started alone: it gives up after --pod_timeout_s with one error line
  naming what to check, instead of hanging."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = simulate_pod.process_env(dict(os.environ), simulate_pod.free_port(), 2, 1, 1, 5)
  t0 = time.time()
  res = subprocess.run([sys.executable, "-m", "spec_cascade.infer",
                        "--gin_file=configs/runs/infer.gin"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 2, res.stderr[-2000:]
  assert "could not join the pod" in res.stderr and "within 5 s" in res.stderr
  assert time.time() - t0 < 90


# ----------------------------------------------------------------------------------------------
# Entry points as a 2-process pod (slow).

@pytest.fixture
def pair_env(tmp_path_factory, monkeypatch):
  return sweep_helpers.session_env(tmp_path_factory, monkeypatch, True, REPO)


def _infer_flags(out, *extra):
  return ["--gin_file=configs/runs/infer.gin",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
          f"--gin.DRAFTER_CHECKPOINT_PATH='{pretrained.offline_drafter_path()}'",
          f"--gin.VERIFIER_CHECKPOINT_PATH='{pretrained.offline_verifier_path()}'",
          "--gin.NUM_EXAMPLES=7", "--gin.BATCH_SIZE=4", "--gin.METHOD='spec_cascade_token_v3'",
          "--gin.ALPHA=0.3", "--gin.TEMPERATURE=1.0", "--gin.NUM_DRAFT_TOKENS=3",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': None, 'targets': 8}",
          "--gin.infer_script.infer.progress=False", *extra]


def _read_run(out):
  with open(out / "predictions.jsonl", encoding="utf-8") as f:
    preds = [json.loads(line) for line in f]
  return preds, json.loads((out / "metrics.json").read_text())


def _assert_same_run(one, other):
  (p1, m1), (p2, m2) = _read_run(one), _read_run(other)
  assert [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
  assert [r["id"] for r in p1] == [r["id"] for r in p2]
  for a, b in zip(p1, p2):
    assert a["counters"] == pytest.approx(b["counters"], rel=1e-5)  # float sums may round
  assert m1["quality"] == m2["quality"] and m1["scores"] == m2["scores"]
  assert m1["counters"] == pytest.approx(m2["counters"], rel=1e-5)
  return m2


@pytest.mark.slow
@pytest.mark.parametrize("procs,devices,model", [(2, 2, 1), (2, 1, 2)])
def test_infer_as_a_pod_matches_one_process(pair_env, tmp_path, procs, devices, model):
  """2 processes × 2 devices (data parallel over 4), and 2 × 1 with the models split over
  'model' = 2 across the processes: the same predictions, counters and metrics as one process
  on one device; only process 0 writes."""
  assert infer.main(_infer_flags(tmp_path / "one")) == 0
  out = tmp_path / "pod"
  code = simulate_pod.run(
      procs, devices, [sys.executable, "-m", "spec_cascade.infer",
                       *_infer_flags(out, f"--gin.MODEL_PARALLEL={model}")],
      str(tmp_path / "logs"), timeout_s=POD_TIMEOUT_S, echo=False)
  logs = {p.name: p.read_text()[-3000:] for p in (tmp_path / "logs").iterdir()}
  assert code == 0, logs
  metrics = _assert_same_run(tmp_path / "one", out)
  assert metrics["mesh"] == {"data": procs * devices // model, "model": model}
  assert sorted(os.listdir(out)) == ["config.gin", "metrics.json", "predictions.jsonl"]


def _write_sweep_gin(path):
  return sweep_helpers.write_sweep_gin(
      path, TASK, "@pretrained.offline_drafter_path()", "@pretrained.offline_verifier_path()",
      "METHODS = ['verifier', 'specdecode', 'spec_cascade_chow']\n"
      "ALPHAS = {'chow': [0.2, 0.5, 0.8]}\n"
      "TEMPERATURES = [1.0]\n"
      "NUM_DRAFT_TOKENS = [3]\n"
      "NUM_EXAMPLES = 7\n"
      "BATCH_SIZE = 4\n"
      "TRIALS = 1\n"
      "TASK_FEATURE_LENGTHS = {'inputs': None, 'targets': 8}\n"
      "sweep_script.run_sweep.progress = False\n"
      "sweep_script.run_sweep.write_report = False\n"
      "sweep_script.run_sweep.cost_ratio_reps = 2\n")


# Fields a timing sets (wall-clock, and c, which is timed, through the modelled latency).
_TIMED = {"wallclock_s", "wallclock_std_s", "rel_latency", "modelled_rel_latency", "latency_s",
          "rel_latency_batch1", "cost_ratio_c"}


def _untimed(rows):
  import dataclasses  # pylint: disable=g-import-not-at-top
  out = {}
  for r in rows:
    d = {k: v for k, v in dataclasses.asdict(r).items() if k not in _TIMED}
    d["extra"] = {k: v for k, v in r.extra.items() if k != "compile_s"}
    out[r.key] = d
  return out


@pytest.mark.slow
def test_sweep_as_a_pod_resumes_after_a_process_dies(pair_env, tmp_path):
  """A 2 × 2 pod sweeps 5 points; process 1 is killed after the first result is written, the
  launcher stops process 0, and the pod is started again: every point is in results.csv once,
  with the same rows as one process apart from timings."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  from spec_cascade import results as results_lib, sweep  # pylint: disable=g-import-not-at-top
  gin_file = _write_sweep_gin(tmp_path / "t.gin")
  assert sweep.main([f"--gin_file={gin_file}",
                     f"--gin.SWEEP_OUTPUT_DIR='{tmp_path / 'one'}'"]) == 0
  one = _untimed(results_lib.read_rows(tmp_path / "one" / "results.csv"))
  assert len(one) == 5

  out, logs = tmp_path / "pod", tmp_path / "logs"
  command = [sys.executable, "-m", "spec_cascade.simulate_pod", "2", "2", "--log_dir", str(logs),
             "--timeout_s", str(POD_TIMEOUT_S), "--", sys.executable, "-m", "spec_cascade.sweep",
             f"--gin_file={gin_file}", f"--gin.SWEEP_OUTPUT_DIR='{out}'"]
  launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
  results = out / "results.csv"
  deadline = time.time() + POD_TIMEOUT_S
  while not (results.exists() and len(results_lib.read_rows(results)) >= 1):
    assert launcher.poll() is None, launcher.stderr.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)
  os.kill(int((logs / "process_1.pid").read_text()), signal.SIGKILL)
  _, err = launcher.communicate(timeout=120)
  assert launcher.returncode != 0 and "process 1 failed" in err, err[-3000:]
  partial = results_lib.read_rows(results)
  assert 1 <= len(partial) < 5, "the kill came too late to test a resume"

  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                         timeout=POD_TIMEOUT_S + 60)
  assert again.returncode == 0, again.stderr[-3000:]
  rows = results_lib.read_rows(results)
  assert len(rows) == len({r.key for r in rows}) == 5
  assert _untimed(rows) == one
  assert not (out / ".lock").exists()
  # Only process 0 wrote: one metrics file per point, none from a second writer.
  assert len(list((out / "metrics" / TASK).glob("*.json"))) == 5


@pytest.mark.slow
def test_mismatched_process_counts_are_an_error(tmp_path):
  """Process 0 starts a pod of 2; process 1 believes in 3: it stops at once naming the
  mismatch (process 0 here stops on its own missing gin values)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  port = simulate_pod.free_port()
  procs = []
  for index, num in ((0, 2), (1, 3)):
    env = simulate_pod.process_env(dict(os.environ), port, num, index, 1, 20)
    procs.append(subprocess.Popen([sys.executable, "-m", "spec_cascade.infer",
                                   "--gin_file=configs/runs/infer.gin"], env=env, cwd=REPO,
                                  stderr=subprocess.PIPE, text=True))
  errors = [p.communicate(timeout=120)[1] for p in procs]
  assert procs[1].returncode == 2, errors[1][-2000:]
  assert "asked for 3 processes (--num_processes), but the coordinator" in errors[1]
  assert "formed a pod of 2" in errors[1]
