"""What ships: the gin configs, found from any working directory and carried in the wheel (an
installed package runs a sweep on its own configs and offline pair), and every document the code
cites."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import gin
import pytest

import sweep_helpers
from spec_cascade import gin_cli, pretrained
from spec_cascade.data import offline

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK_METHODS = ["drafter", "verifier", "specdecode", "spec_cascade_token_v3"]


def _configure(*flags):
  gin_cli.configure(gin_cli.parse_flags(list(flags), "test"))


def test_checkout_configs_resolve_from_any_working_directory(tmp_path, monkeypatch):
  # `python -m` puts the working directory on sys.path, and sweeps write to runs/ there; pytest
  # also has the checkout (with its configs/ folder) on sys.path. gin reads folders on sys.path
  # as packages, which used to fail for both.
  (tmp_path / "runs").mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  assert pathlib.Path(gin_cli.CONFIGS_DIR) == ROOT / "configs"
  try:
    for path in ("offline/quick.gin", "configs/offline/quick.gin"):
      _configure(f"--gin_file={path}")  # includes configs/offline/main.gin → configs/runs/sweep.gin
      assert gin.query_parameter("%METHODS") == QUICK_METHODS
      assert gin.query_parameter("%NUM_ALPHAS") == 5  # set in configs/runs/sweep.gin only
    with pytest.raises(gin_cli.FlagError, match="required gin values are not set: DRAFTER"):
      _configure("--gin_file=runs/sweep.gin")
  finally:
    gin.clear_config()


def test_every_cited_document_is_in_the_repository():
  # Module docstrings once cited a method spec that lived outside the repository.
  cited = re.compile(r"(?<![\w/.-])docs/[\w./-]+\.md")
  missing = []
  tops = ("spec_cascade", "configs", "docs", "tests", "scripts", "bench")
  files = [ROOT / "README.md"] + [p for top in tops for p in sorted((ROOT / top).rglob("*"))
                                  if p.suffix in (".py", ".md", ".gin", ".sh")]
  for path in files:
    for ref in cited.findall(path.read_text(encoding="utf-8")):
      if not (ROOT / ref).is_file():
        missing.append(f"{path.relative_to(ROOT)}: {ref}")
  assert not missing, "\n".join(missing)


def _build_inputs(dest: pathlib.Path) -> pathlib.Path:
  """Copies what setup.py builds from into `dest`: building in the checkout would leave build/
  there, and setuptools packs a stale build/lib (modules deleted since) into later wheels."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
  dest.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy2(ROOT / name, dest / name)
  for name in ("spec_cascade", "configs"):
    shutil.copytree(ROOT / name, dest / name, ignore=ignore)
  return dest


@pytest.mark.slow
def test_installed_wheel_runs_a_sweep_on_its_packaged_configs(tmp_path):
  src = _build_inputs(tmp_path / "src")
  wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
  work.mkdir()
  assert ROOT not in work.parents

  # No build isolation: that would fetch setuptools from an index; the venv's is the one to
  # check. -v shows the backend's output, where setuptools' warnings go. Without
  # PYTHONDONTWRITEBYTECODE distutils' "byte-compiling is disabled" notice (the environment,
  # not the project) stays out of the output.
  build_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
       "-w", str(wheels), str(src)],
      capture_output=True, text=True, env=build_env, timeout=300, check=False)
  output = build.stdout + build.stderr
  assert build.returncode == 0, output[-3000:]
  warnings = [line for line in output.splitlines() if re.search(r"warn", line, re.I)]
  assert not warnings, "\n".join(warnings)
  (wheel,) = wheels.glob("spec_cascade-*.whl")
  with zipfile.ZipFile(wheel) as zf:
    shipped = {n[len("spec_cascade/configs/"):] for n in zf.namelist()
               if n.startswith("spec_cascade/configs/")}
    # The few-row CPU kernel is compiled from its source on the user's machine.
    assert "spec_cascade/models/kernels/few_rows.cc" in zf.namelist()
  in_checkout = {p.relative_to(ROOT / "configs").as_posix()
                 for p in (ROOT / "configs").rglob("*.gin")}
  assert shipped == in_checkout
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
       str(wheel)], capture_output=True, text=True, timeout=300, check=False)
  assert install.returncode == 0, install.stdout + install.stderr

  # The venv's interpreter supplies the dependencies; PYTHONPATH puts the installed package
  # before the venv's editable install of some checkout. No offline pair is named, so the
  # packaged one (spec_cascade/assets) is used; the corpora are the hermetic test corpora.
  corpora = sweep_helpers.offline_env(tmp_path / "offline_env", with_pair=False)
  env = {k: v for k, v in os.environ.items() if k != pretrained.ENV_PAIR}
  env.update({"PYTHONPATH": str(site), offline.ENV_RAW: str(corpora.raw),
              offline.ENV_CACHE: str(corpora.cache)})
  probe = subprocess.run(
      [sys.executable, "-c", "import spec_cascade.gin_cli as g; print(g.__file__); "
       "print(g.CONFIGS_DIR)"], cwd=work, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert probe.returncode == 0, probe.stderr
  module_file, configs_dir = probe.stdout.split()
  assert pathlib.Path(module_file) == site / "spec_cascade" / "gin_cli.py"
  assert pathlib.Path(configs_dir) == site / "spec_cascade" / "configs"

  # configs/offline/quick.gin, cut to one task, the drafter (and the verifier every sweep adds),
  # two examples and eight tokens: the point is that the configs resolve and a sweep runs.
  run = subprocess.run(
      [sys.executable, "-m", "spec_cascade.sweep", "--gin_file=offline/quick.gin",
       "--gin.METHODS=['drafter']", "--gin.MIXTURE_OR_TASK_NAME='debian_ende'",
       "--gin.NUM_EXAMPLES=2", "--gin.BATCH_SIZE=2", "--gin.LATENCY_EXAMPLES=0",
       "--gin.TEMPERATURES=[0.0]", "--gin.SWEEP_OUTPUT_DIR='out'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 8}",
       "--gin.sweep_script.run_sweep.cost_ratio_reps=1",
       "--gin.sweep_script.run_sweep.progress=False",
       "--gin.sweep_script.run_sweep.write_report=False"],
      cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  out = work / "out"
  config = (out / "config.gin").read_text()
  assert "ALPHAS = {'token_v3': [0.3, 0.7, 0.95]}" in config  # offline/quick.gin
  assert "@pretrained.offline_vocab_path()" in config  # its include, main.gin
  assert "NUM_ALPHAS = 5" in config  # main.gin's include, runs/sweep.gin
  settings = json.loads((out / "settings.json").read_text())
  assert settings["vocabulary_path"] == str(
      site / "spec_cascade" / "assets" / "offline_pair" / "vocab" / "sentencepiece.model")
  rows = (out / "results.csv").read_text().splitlines()
  assert sorted(r.split(",")[1] for r in rows[1:]) == ["drafter", "verifier"]
