"""Stage artifacts: a long training run carried from one machine to the next.

A CPU run of several hours outlives one session, and a run directory (checkpoints, optimizer
state) is not guaranteed to survive to the next machine. A stage artifact is what does: the
model's parameters as they stand, in bfloat16 (half the size, small enough to commit), with the
recipe and the step reached. The next sitting continues from it:

    python -m spec_cascade.stages --model_dir=runs/offline_deep/verifier \
        --dest=stages/offline_deep/verifier --recipe=configs/offline/train_verifier_deep.gin
    # ... on another machine:
    python -m spec_cascade.train --gin_file=configs/offline/train_verifier_deep.gin \
        --gin.MODEL_DIR="'runs/offline_deep/verifier'" \
        --gin.INITIAL_CHECKPOINT_PATH="'stages/offline_deep/verifier'"

The trainer reads the step from the artifact (`start_step`) and starts its schedule and data
stream there; the optimizer state starts afresh (Adafactor re-estimates its second moments
within a few dozen steps), and the parameters carry bfloat16 rounding. So a staged run is not
bit-identical to an uninterrupted one: the artifact records both facts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from spec_cascade import gin_cli

STAGE_KEY = "stage"


def stage_record(path: str) -> dict[str, Any] | None:
  """The stage record of a checkpoint folder (None for checkpoints that are not stages)."""
  # The trainer's export is a spec_cascade checkpoint: its record is checkpoints.INFO_FILE.
  from spec_cascade import checkpoints  # pylint: disable=import-outside-toplevel
  info = os.path.join(str(path), checkpoints.INFO_FILE)
  if "://" in str(path) or not os.path.isfile(info):
    return None
  with open(info, encoding="utf-8") as f:
    try:
      record = json.load(f).get(STAGE_KEY)
    except json.JSONDecodeError as e:
      raise ValueError(f"{info} is not valid JSON ({e}).") from e
  return record if isinstance(record, dict) else None


def start_step(initial_checkpoint_path: str, initial_step: int | None) -> int:
  """The step a run from `initial_checkpoint_path` starts at: initial_step if given, else the
  step its stage record gives, else 0."""
  if initial_step is not None:
    if not isinstance(initial_step, int) or initial_step < 0:
      raise ValueError(f"INITIAL_STEP must be an int >= 0 or None, got {initial_step!r}.")
    return initial_step
  record = stage_record(initial_checkpoint_path)
  return int(record["step"]) if record and "step" in record else 0


def latest_params(model_dir: str):
  """(step, float32 params) of the latest checkpoint in a trainer MODEL_DIR."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt_dir = os.path.join(os.path.abspath(model_dir), "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  if not steps:
    raise FileNotFoundError(f"{model_dir} has no training checkpoints (expected "
                            f"{ckpt_dir}/<step>/state).")
  step = steps[-1]
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(ckpt_dir, str(step), "state"))
  return step, jax.tree.map(lambda x: np.asarray(x, np.float32), state["params"])


def save_stage(model_dir: str, dest: str, recipe: str, model: str, note: str = ""
               ) -> dict[str, Any]:
  """Writes the latest checkpoint of MODEL_DIR (a run of the named size `model`) as a bfloat16
  stage artifact at `dest`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from spec_cascade import checkpoints  # pylint: disable=import-outside-toplevel
  from spec_cascade.models import get_config  # pylint: disable=import-outside-toplevel
  config = get_config(model)
  step, params = latest_params(model_dir)
  record = {"recipe": recipe, "step": step, "source": os.path.abspath(model_dir),
            "note": note or "parameters rounded to bfloat16; optimizer state not kept"}
  checkpoints.save_checkpoint(dest, jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params),
                              config, force=True, extra_info={STAGE_KEY: record})
  return record


@gin_cli.cli_main
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m spec_cascade.stages",
                                   description="Save a training run's latest checkpoint as a "
                                   "bfloat16 stage artifact the next sitting continues from.")
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--dest", required=True)
  parser.add_argument("--recipe", required=True, help="the gin file that continues the run")
  parser.add_argument("--model", required=True, help="the run's named size (e.g. mini_deep)")
  parser.add_argument("--note", default="")
  args = parser.parse_args(argv)
  record = save_stage(args.model_dir, args.dest, args.recipe, args.model, args.note)
  print(f"wrote {args.dest}: step {record['step']} of {args.recipe}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
