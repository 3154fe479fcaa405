"""The offline default drafter/verifier pair: small T5 v1.1 models trained on the offline corpora.

Layout of the pair folder (`offline_pair_dir()`):

    drafter/    a spec_cascade checkpoint (checkpoints.save_checkpoint: params/ + config JSON)
    verifier/   the same for the verifier
    vocab/sentencepiece.model   the SentencePiece model both were trained with (without the
                                100 extra ids; the tokenizer appends them, as seqio does)
    pair.json   provenance: what the pair is, how it was made

The folder is `spec_cascade/assets/offline_pair/` unless the environment variable
SPEC_CASCADE_OFFLINE_PAIR (or an explicit argument) points elsewhere; tests use that to run on a
random pair. `install_offline_pair` copies any two checkpoints (e.g. the trainer's MODEL_DIRs) into
the layout:

    python -m spec_cascade.pretrained --drafter=runs/offline/drafter \
        --verifier=runs/offline/verifier [--dest=DIR] [--vocab=PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
from typing import Any, Callable, Mapping

import numpy as np

from spec_cascade import gin_cli

ENV_PAIR = "SPEC_CASCADE_OFFLINE_PAIR"
ASSETS_PAIR = pathlib.Path(__file__).resolve().parent / "assets" / "offline_pair"
DRAFTER, VERIFIER, VOCAB = "drafter", "verifier", "vocab"
VOCAB_FILE = "sentencepiece.model"
PAIR_INFO = "pair.json"
HOW_TO_MAKE = (
    "Train the pair with scripts/train_offline_pair.sh (or python -m spec_cascade.train with "
    "configs/offline/train_drafter.gin and train_verifier.gin, then python -m "
    "spec_cascade.pretrained --drafter=DRAFTER_MODEL_DIR --verifier=VERIFIER_MODEL_DIR), or "
    f"point {ENV_PAIR} at a folder holding drafter/, verifier/ and vocab/{VOCAB_FILE}.")


class MissingPairError(FileNotFoundError):
  """The offline pair is not where it should be; the message says how to make it."""


def offline_pair_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The pair folder: `path`, else $SPEC_CASCADE_OFFLINE_PAIR, else the package's assets."""
  if path:
    return pathlib.Path(path)
  env = os.environ.get(ENV_PAIR)
  return pathlib.Path(env) if env else ASSETS_PAIR


def check_offline_pair(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The pair folder, after checking it holds drafter/, verifier/ and the vocabulary."""
  root = offline_pair_dir(path)
  missing = [name for name in (DRAFTER, VERIFIER, f"{VOCAB}/{VOCAB_FILE}")
             if not (root / name).exists()]
  if missing:
    raise MissingPairError(
        f"The offline drafter/verifier pair is missing from {root} (no {', '.join(missing)}). "
        + HOW_TO_MAKE)
  return root


def offline_drafter_path(path: str | None = None) -> str:
  """Checkpoint folder of the offline drafter (for gin: @pretrained.offline_drafter_path())."""
  return str(check_offline_pair(path) / DRAFTER)


def offline_verifier_path(path: str | None = None) -> str:
  """Checkpoint folder of the offline verifier (gin: @pretrained.offline_verifier_path())."""
  return str(check_offline_pair(path) / VERIFIER)


def offline_vocab_path(path: str | None = None) -> str:
  """SentencePiece model of the offline pair (gin: @pretrained.offline_vocab_path())."""
  return str(check_offline_pair(path) / VOCAB / VOCAB_FILE)


def load_offline_pair(path: str | os.PathLike | None = None, dtype: str = "float32",
                      matmul_dtype: str | None = None):
  """→ (drafter Bundle, verifier Bundle, SentencePieceTokenizer) of the offline pair.
  matmul_dtype: as `infer.load_bundle`'s ('bfloat16': bfloat16 inputs to the dense layers)."""
  from spec_cascade import infer  # pylint: disable=g-import-not-at-top  (jax, orbax)
  from spec_cascade.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  root = check_offline_pair(path)
  drafter = infer.load_bundle(str(root / DRAFTER), dtype=dtype, matmul_dtype=matmul_dtype)
  verifier = infer.load_bundle(str(root / VERIFIER), dtype=dtype, matmul_dtype=matmul_dtype)
  tokenizer = vocab_lib.SentencePieceTokenizer(root / VOCAB / VOCAB_FILE)
  infer.check_pair(drafter, verifier, tokenizer)
  return drafter, verifier, tokenizer


def offline_pair_for_bench(path: str | os.PathLike | None = None, task: str = "debian_ende",
                           split: str = "validation", dtype: str = "float32"):
  """→ (drafter, verifier, make_inputs) for benchmarks on real inputs.

  make_inputs(batch, length=None) → int32 [batch, S]: the first `batch` inputs of the task's
  split (tokenized, EOS appended; cycling if the split is shorter), zero-padded to their longest
  row, or cut/padded to `length` when given.
  """
  from spec_cascade.data import offline  # pylint: disable=g-import-not-at-top
  drafter, verifier, tokenizer = load_offline_pair(path, dtype)
  rows = offline.load_split(task, split)
  if not rows:
    raise ValueError(f"{task}/{split} is empty; nothing to benchmark on.")

  def make_inputs(batch: int, length: int | None = None) -> np.ndarray:
    if batch < 1:
      raise ValueError(f"batch must be >= 1, got {batch}.")
    ids = [tokenizer.encode(rows[i % len(rows)]["inputs"]) + [tokenizer.eos_id]
           for i in range(batch)]
    width = length or max(len(x) for x in ids)
    out = np.zeros((batch, width), np.int32)
    for r, x in enumerate(ids):
      x = x[:width]
      out[r, :len(x)] = x
    return out

  return drafter, verifier, make_inputs


def save_offline_pair(dest: str | os.PathLike, drafter, verifier, vocab_model: str | os.PathLike,
                      info: Mapping[str, Any] | None = None, force: bool = False) -> pathlib.Path:
  """Writes two Bundles and the vocabulary into the pair layout at `dest`.

  drafter / verifier: `decoding.Bundle(model, params)`. vocab_model: a SentencePiece .model file
  (without extra ids). `force` replaces an existing pair.
  """
  from spec_cascade import checkpoints  # pylint: disable=g-import-not-at-top
  dest = pathlib.Path(dest)
  if dest.exists() and any(dest.iterdir()):
    if not force:
      raise FileExistsError(f"{dest} is not empty; pass force=True to replace the pair.")
    for name in (DRAFTER, VERIFIER, VOCAB, PAIR_INFO):
      target = dest / name
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
  dest.mkdir(parents=True, exist_ok=True)
  checkpoints.check_same_vocabulary(drafter.model.config, verifier.model.config)
  (dest / VOCAB).mkdir()
  shutil.copyfile(vocab_model, dest / VOCAB / VOCAB_FILE)
  rel_vocab = os.path.join("..", VOCAB, VOCAB_FILE)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spec_cascade.models import cpu_kernels  # pylint: disable=g-import-not-at-top
  for name, bundle in ((DRAFTER, drafter), (VERIFIER, verifier)):
    # Stored as bfloat16 (half the size in the repository; loaded back as float32): the shipped
    # pair is evaluated from these rounded weights, so its reported numbers are what users get.
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16),
                          cpu_kernels.unstreamed(bundle.params))  # one copy of each kernel
    checkpoints.save_checkpoint(str(dest / name), params, bundle.model.config,
                                vocabulary_path=rel_vocab)
  meta = dict(info or {})
  meta["drafter_params"] = int(drafter.model.num_params())
  meta["verifier_params"] = int(verifier.model.num_params())
  (dest / PAIR_INFO).write_text(json.dumps(meta, indent=2, default=str) + "\n")
  return dest


def _trained_step(path) -> int | None:
  """The training step recorded in `path` (a trainer MODEL_DIR, its export/, or a stage
  artifact), or None for checkpoints that do not record one."""
  from spec_cascade import stages  # pylint: disable=g-import-not-at-top
  for info in (pathlib.Path(path) / "export" / "spec_cascade_checkpoint.json",
               pathlib.Path(path) / "spec_cascade_checkpoint.json"):
    if info.is_file():
      step = json.loads(info.read_text()).get("step")
      if step is None:
        step = (stages.stage_record(str(info.parent)) or {}).get("step")
      return None if step is None else int(step)
  return None


def install_offline_pair(drafter_checkpoint: str, verifier_checkpoint: str,
                         dest: str | os.PathLike | None = None,
                         vocab_model: str | os.PathLike | None = None,
                         force: bool = False) -> pathlib.Path:
  """Loads two checkpoints (any format `infer.load_bundle` reads: trainer MODEL_DIRs, our
  checkpoints, T5X, Hugging Face) and saves them as the offline pair at `dest` (default: the
  package assets). vocab_model defaults to the offline corpora's SentencePiece model."""
  from spec_cascade import infer  # pylint: disable=g-import-not-at-top
  from spec_cascade.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  drafter = infer.load_bundle(drafter_checkpoint, stream_weights=False)
  verifier = infer.load_bundle(verifier_checkpoint, stream_weights=False)
  vocab_model = vocab_model or vocab_lib.get_vocab_path()
  infer.check_pair(drafter, verifier, vocab_lib.SentencePieceTokenizer(vocab_model))
  info = {"drafter_source": str(drafter_checkpoint), "verifier_source": str(verifier_checkpoint),
          "vocab_source": str(vocab_model)}
  for name, path in (("drafter", drafter_checkpoint), ("verifier", verifier_checkpoint)):
    step = _trained_step(path)
    if step is not None:
      info[f"{name}_train_steps"] = step
  return save_offline_pair(offline_pair_dir(dest), drafter, verifier, vocab_model, info, force)


@gin_cli.cli_main
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m spec_cascade.pretrained",
                                   description="Installs a drafter/verifier pair as the offline "
                                   "default pair.")
  parser.add_argument("--drafter", required=True, help="drafter checkpoint or trainer MODEL_DIR")
  parser.add_argument("--verifier", required=True, help="verifier checkpoint or MODEL_DIR")
  parser.add_argument("--dest", default=None, help=f"pair folder (default {ASSETS_PAIR})")
  parser.add_argument("--vocab", default=None, help="SentencePiece model (default: offline vocab)")
  parser.add_argument("--force", action="store_true", help="replace an existing pair")
  args = parser.parse_args(argv)
  out = install_offline_pair(args.drafter, args.verifier, args.dest, args.vocab, args.force)
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
