"""Bad input at every command line: one `error:` line that says what was wrong and how to fix
it, exit status 2, no traceback, and nothing already written changed.

(The API's bad inputs are in tests/test_programs.py, damaged checkpoint files in
tests/test_damaged_files.py, the sweep's in tests/test_sweep.py.)
"""
import os
import pathlib

import pytest

from spec_cascade import convert, evaluate_pair, gin_cli, infer, pretrained, report, stages
from spec_cascade import train as T
from spec_cascade.models import grow

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIR = ROOT / "spec_cascade" / "assets" / "offline_pair"
DRAFTER, VERIFIER = str(PAIR / "drafter"), str(PAIR / "verifier")


@pytest.fixture
def box(tmp_path):
  """A folder with a regular file `afile` (an output path under it cannot be made), an
  existing run folder `old` with a file in it, and a snapshot of both for the end."""
  (tmp_path / "afile").write_text("keep me")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "results.csv").write_text("task,method\n")
  return tmp_path


def _snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _train(argv):
  return gin_cli.run_cli(lambda: T.main(argv))


_FINETUNE = ["--gin_file=configs/offline/distill_drafter.gin"]
_INFER = ["--gin_file=configs/runs/infer.gin", "--gin.INFER_OUTPUT_DIR='{box}/i'",
          "--gin.MIXTURE_OR_TASK_NAME='debian_ende'"]

CASES = {
    # train
    "train: misspelt macro": (_train, _FINETUNE + ["--gin.MODEL_DIR='{box}/m'",
                                                   "--gin.TRAIN_STEP=3"],
                              ["TRAIN_STEP", "typo", "TRAIN_STEPS"]),
    "train: missing gin file": (_train, ["--gin_file={box}/nope.gin"],
                                ["nope.gin", "cannot read"]),
    "train: no gin file": (_train, ["--gin.MODEL_DIR='x'"], ["at least one --gin_file"]),
    "train: unknown flag": (_train, _FINETUNE + ["--steps=3"], ["unrecognized argument",
                                                               "--steps=3"]),
    "train: binding without value": (_train, _FINETUNE + ["--gin.MODEL_DIR"],
                                     ["--gin.NAME=VALUE"]),
    "train: string for a float": (_train, _FINETUNE + ["--gin.MODEL_DIR='{box}/m'",
                                                       "--gin.LEARNING_RATE='fast'"],
                                  ["LEARNING_RATE", "must be float or int", "'fast'"]),
    "train: float for an int": (_train, _FINETUNE + ["--gin.MODEL_DIR='{box}/m'",
                                                     "--gin.BATCH_SIZE=2.5"],
                                ["batch_size", "BATCH_SIZE", "must be int", "2.5"]),
    "train: unquoted string": (_train, _FINETUNE + ["--gin.MODEL_DIR=/tmp/x"],
                               ["MODEL_DIR", "quote"]),
    "train: model dir under a file": (_train, _FINETUNE + ["--gin.MODEL_DIR='{box}/afile/m'"],
                                      ["afile/m", "not writable"]),
    "train: missing teacher": (_train, _FINETUNE + ["--gin.MODEL_DIR='{box}/m'",
                                                    "--gin.TEACHER_CHECKPOINT_PATH='{box}/t'"],
                               ["TEACHER_CHECKPOINT_PATH", "does not exist"]),
    # infer
    "infer: misspelt macro": (infer.main, _INFER + ["--gin.METHOD='verifier'",
                                                    "--gin.TEMPERATUR=0.0"],
                              ["TEMPERATUR", "typo"]),
    "infer: unknown method": (infer.main, _INFER + ["--gin.METHOD='spec_decod'"],
                              ["unknown method 'spec_decod'"]),
    "infer: string for alpha": (infer.main, _INFER + ["--gin.METHOD='spec_cascade_chow'",
                                                      "--gin.ALPHA='high'"],
                                ["alpha", "must be float", "'high'"]),
    "infer: unset method": (infer.main, _INFER, ["METHOD", "--gin.METHOD=VALUE"]),
    "infer: bad flag": (infer.main, ["--gin_file=configs/runs/infer.gin", "--method=x"],
                        ["unrecognized argument"]),
    # convert
    "convert: missing source": (convert.main, ["--from", "hf", "{box}/none", "--to",
                                               "{box}/out"], ["{box}/none", "does not exist"]),
    "convert: wrong --from": (convert.main, ["--from", "hf", VERIFIER, "--to", "{box}/out"],
                              ["--from hf", "looks like"]),
    # evaluate_pair
    "evaluate_pair: missing checkpoint": (evaluate_pair.main,
                                          ["--drafter", "{box}/none", "--verifier", VERIFIER],
                                          ["{box}/none", "does not exist"]),
    "evaluate_pair: zero examples": (evaluate_pair.main, ["--num_examples", "0", "--drafter",
                                                          DRAFTER, "--verifier", VERIFIER],
                                     ["num_examples", "positive"]),
    # stages
    "stages: no checkpoints": (stages.main, ["--model_dir", "{box}/old", "--dest", "{box}/st",
                                             "--recipe", "x.gin", "--model", "mini"],
                               ["no training checkpoints", "{box}/old"]),
    # pretrained
    "pretrained: missing drafter": (pretrained.main, ["--drafter", "{box}/none", "--verifier",
                                                      VERIFIER, "--dest", "{box}/p"],
                                    ["{box}/none", "does not exist"]),
    # grow
    "grow: missing source": (grow.main, ["--src", "{box}/none", "--dst", "{box}/g"],
                             ["{box}/none", "does not exist"]),
    "grow: shrinking": (grow.main, ["--src", VERIFIER, "--dst", "{box}/g",
                                    "--num_decoder_layers", "2"], ["at least as many"]),
    # report
    "report: no results": (report.main, ["{box}/none"], ["no results table", "run the sweep"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_refuses_bad_input_clearly(name, box, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  main, argv, phrases = CASES[name]
  before = _snapshot(box)
  rc = main([a.replace("{box}", str(box)) for a in argv])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert lines, err
  for phrase in phrases:
    assert phrase.replace("{box}", str(box)) in err, (phrase, err)
  assert _snapshot(box) == before  # nothing written, nothing changed
  assert not os.path.exists(box / "m" / "checkpoints")


def test_debug_variable_shows_the_traceback(box, monkeypatch):
  monkeypatch.setenv("SPEC_CASCADE_DEBUG", "1")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    grow.main(["--src", str(box / "none"), "--dst", str(box / "g")])


def test_describe_error_names_the_path_of_file_system_errors(tmp_path):
  e = NotADirectoryError(20, "Not a directory", str(tmp_path / "f" / "x"))
  assert "regular file" in gin_cli.describe_error(e) and "f/x" in gin_cli.describe_error(e)
  assert "permission denied" in gin_cli.describe_error(PermissionError(13, "no", "/root/x"))


def test_relative_checkpoint_paths_load(tmp_path, monkeypatch):
  """The example gins give checkpoint paths relative to the working directory; every format
  loads from one (T5X's tensorstore and Orbax need absolute paths internally)."""
  from spec_cascade import checkpoints
  from test_checkpoints import V11, _assert_same, _params, write_t5x_checkpoint
  params = _params(V11)
  write_t5x_checkpoint(tmp_path / "t5x" / "checkpoint_3", params)
  checkpoints.save_checkpoint(str(tmp_path / "ours"), params, V11)
  checkpoints.export_hf(params, V11, str(tmp_path / "hf"))
  monkeypatch.chdir(tmp_path)
  for rel in ("t5x", "t5x/checkpoint_3", "ours", "hf", "./ours"):
    loaded, config = checkpoints.load_params(rel)
    _assert_same(loaded, params)
    bundle = infer.load_bundle(rel)
    assert bundle.model.config.num_decoder_layers == V11.num_decoder_layers


@pytest.mark.slow  # the paper gins import the seqio tasks (TensorFlow)
def test_every_shipped_gin_binds_values_of_the_annotated_types(monkeypatch):
  """The type check refuses a mistyped value; none of our own gin files may trip it."""
  import glob

  import gin
  monkeypatch.chdir(ROOT)
  files = sorted(glob.glob("configs/**/*.gin", recursive=True))
  assert len(files) > 15
  try:
    for path in ("", str(ROOT), str(ROOT / "configs")):
      if path not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
        gin.add_config_file_search_path(path)
    for f in files:
      gin.clear_config()
      gin.parse_config_file(f)
      gin_cli.check_bound_types()
  finally:
    gin.clear_config()
