"""scripts/train_offline_pair.sh with a stand-in `python`: side by side on one core each, then
the verifier stopped (it checkpoints) and restarted on all cores once the drafter finishes."""
import hashlib
import os
import pathlib
import stat
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_offline_pair.sh"

# Stands in for `python -c <build corpora>` and `python -m spec_cascade.train ...`: logs how it
# was launched (pinned = single-threaded XLA), checkpoints on SIGTERM like the trainer
# (exit 143), and "finishes" by writing the export marker.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -c ]; then echo "[data] fake"; exit 0; fi
dir=""; for a in "$@"; do case "$a" in --gin.MODEL_DIR=*) dir="${a#--gin.MODEL_DIR=}";; esac; done
dir="${dir//\'/}"; name="$(basename "$dir")"
mode=all; case "${XLA_FLAGS:-}" in *intra_op_parallelism_threads=1*) mode=pinned;; esac
trap 'echo "checkpoint $mode" >> "$dir/events"; exit 143' TERM
echo "start $mode" >> "$dir/events"
finish() { mkdir -p "$dir/export"; echo '{}' > "$dir/export/spec_cascade_checkpoint.json"; echo "done $mode" >> "$dir/events"; exit 0; }
if [ "$name" = drafter ]; then sleep 1; finish; fi
if [ "$mode" = all ]; then sleep 1; finish; fi
for i in $(seq 600); do sleep 0.1; done   # a pinned verifier runs until it is moved
exit 1
"""


@pytest.fixture
def fake_venv(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(python.stat().st_mode | stat.S_IEXEC)
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  # env.sh reinstalls unless the stamp matches setup.py + requirements: make it match.
  want = hashlib.sha256(b"".join(
      p.read_bytes() for p in [ROOT / "setup.py"] + sorted((ROOT / "requirements").glob("*.txt"))
  )).hexdigest()[:16]
  (venv / ".spec_cascade_installed").write_text(want + "\n")
  return venv


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the side-by-side mode needs 2 cores")
def test_verifier_moves_to_all_cores_when_the_drafter_finishes(tmp_path, fake_venv):
  out = tmp_path / "runs"
  env = dict(os.environ, SPEC_CASCADE_VENV=str(fake_venv), SPEC_CASCADE_POLL_S="0.2")
  res = subprocess.run(["bash", str(SCRIPT), str(out), "--gin.TRAIN_STEPS=5", "--wait"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
  assert res.returncode == 0, res.stdout + res.stderr
  assert "drafter: pid" in res.stdout and "core 0" in res.stdout
  events = lambda name: (out / name / "events").read_text().split("\n")[:-1]
  assert events("drafter") == ["start pinned", "done pinned"]
  # The pinned verifier was stopped with SIGTERM (it checkpoints), then resumed on all cores.
  assert events("verifier") == ["start pinned", "checkpoint pinned", "start all", "done all"]
  log = (out / "verifier" / "train.log").read_text()
  assert "moving the verifier to all cores" in log
  status = subprocess.run(["bash", str(SCRIPT), str(out), "--status"], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)
  assert "drafter: finished" in status.stdout and "verifier: finished" in status.stdout


def test_stop_stops_both_runs(tmp_path, fake_venv):
  out = tmp_path / "runs"
  env = dict(os.environ, SPEC_CASCADE_VENV=str(fake_venv), SPEC_CASCADE_POLL_S="0.2")
  # A drafter that never finishes: the verifier stays pinned until --stop.
  fake = fake_venv / "bin" / "python"
  fake.write_text(fake.read_text().replace('if [ "$name" = drafter ]; then sleep 1; finish; fi',
                                           ''))
  subprocess.run(["bash", str(SCRIPT), str(out)], check=True, capture_output=True, env=env,
                 timeout=60, cwd=ROOT)
  # Stop only once both runs have started (and set their SIGTERM handler): on a loaded machine
  # the launch can take longer than the script's return.
  for name in ("drafter", "verifier"):
    events = out / name / "events"
    for _ in range(300):
      if events.exists() and "start pinned" in events.read_text():
        break
      subprocess.run(["sleep", "0.1"], check=True)
    else:
      pytest.fail(f"{name} did not start within 30 s")
  subprocess.run(["bash", str(SCRIPT), str(out), "--stop"], check=True, capture_output=True,
                 env=env, timeout=60, cwd=ROOT)
  for name in ("drafter", "verifier"):
    pgid = int((out / name / "train.pid").read_text())
    for _ in range(100):
      try:
        os.killpg(pgid, 0)
      except ProcessLookupError:
        break
      subprocess.run(["sleep", "0.1"], check=True)
    else:
      pytest.fail(f"{name} still running after --stop")
    assert (out / name / "events").read_text().split("\n")[:-1] == [
        "start pinned", "checkpoint pinned"]
