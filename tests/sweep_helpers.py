"""A hermetic offline setting for infer/sweep tests: synthetic corpora + a small random pair.

`offline_env(tmp_root, with_pair)` builds (once per test session and root) the offline corpora
from `spec_cascade.data.fixtures` with a 200-piece vocabulary and, if asked, saves the drafter /
verifier pair of `test_pair()` (`pairs.make_pair`, vocabulary 384 ≥ the tokenizer's 300 ids) in
the offline-pair layout.
`use_env(monkeypatch, env)` points the environment variables at them, so nothing reaches apt or
the user's cache; `session_env` does both for a fixture.
"""
import dataclasses
import os
import pathlib

import gin

from pairs import make_pair
from spec_cascade import pretrained
from spec_cascade.data import fixtures, offline

PIECES = 200
_BUILT = {}
_PAIR = []


def test_pair():
  """The random (drafter, verifier) Bundles, made once per session (init compiles are slow)."""
  if not _PAIR:
    _PAIR.append(make_pair(vocab=384, emb=32))
  return _PAIR[0]


@dataclasses.dataclass(frozen=True)
class OfflineEnv:
  raw: pathlib.Path
  cache: pathlib.Path
  vocab: pathlib.Path
  pair: pathlib.Path


def offline_env(root: pathlib.Path, with_pair: bool = True) -> OfflineEnv:
  key = str(root)
  if key in _BUILT:
    env = _BUILT[key]
    if with_pair and not (env.pair / pretrained.VERIFIER).exists():
      drafter, verifier = test_pair()
      pretrained.save_offline_pair(env.pair, drafter, verifier, env.vocab,
                                   info={"kind": "random test pair"})
    return env
  raw = fixtures.write_raw_fixture(root / "raw")
  cache = root / "cache"
  old = os.environ.get(offline.ENV_RAW)
  os.environ[offline.ENV_RAW] = str(raw)
  try:
    with gin.unlock_config():
      gin.bind_parameter("offline_settings.vocab_pieces", PIECES)
    directory = offline.build_corpora(cache)
  finally:
    gin.clear_config()
    if old is None:
      os.environ.pop(offline.ENV_RAW, None)
    else:
      os.environ[offline.ENV_RAW] = old
  vocab = directory / f"sentencepiece_{PIECES}.model"
  assert vocab.exists(), list(directory.iterdir())
  env = OfflineEnv(raw, cache, vocab, root / "pair")
  _BUILT[key] = env
  return offline_env(root, with_pair) if with_pair else env


def use_env(monkeypatch, env: OfflineEnv) -> None:
  monkeypatch.setenv(offline.ENV_RAW, str(env.raw))
  monkeypatch.setenv(offline.ENV_CACHE, str(env.cache))
  monkeypatch.setenv(pretrained.ENV_PAIR, str(env.pair))


def session_env(tmp_path_factory, monkeypatch, with_pair: bool, cwd: str) -> OfflineEnv:
  """For a fixture: the session's offline env (one per pytest session), pointed at by the
  environment, with the working directory at `cwd` (the gin files' relative includes)."""
  env = offline_env(tmp_path_factory.getbasetemp() / "offline_env", with_pair)
  use_env(monkeypatch, env)
  monkeypatch.chdir(cwd)
  return env


def write_sweep_gin(path: pathlib.Path, task: str, drafter: str, verifier: str,
                    settings: str) -> pathlib.Path:
  """A sweep gin file: configs/runs/sweep.gin for `task` and the given checkpoint expressions
  (gin values, e.g. "@pretrained.offline_drafter_path()"), then `settings` (gin lines)."""
  path.write_text(
      "from __gin__ import dynamic_registration\n"
      "import spec_cascade.pretrained as pretrained\n"
      "import spec_cascade.sweep as sweep_script\n"
      "include 'configs/runs/sweep.gin'\n"
      f"MIXTURE_OR_TASK_NAME = '{task}'\n"
      f"DRAFTER_CHECKPOINT_PATH = {drafter}\n"
      f"VERIFIER_CHECKPOINT_PATH = {verifier}\n" + settings)
  return path
