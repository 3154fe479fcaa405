"""Training and fine-tuning of T5 models, T5X-style (gin, optax, Orbax).

    python -m spec_cascade.train --gin_file=configs/runs/finetune.gin \
        --gin.MODEL="'tiny'" --gin.MODEL_DIR="'/tmp/x'" --gin.TRAIN_STEPS=100 \
        --gin.MIXTURE_OR_TASK_NAME="'debian_mix'" \
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 128, 'targets': 64}" \
        --gin.INITIAL_CHECKPOINT_PATH=None

Loss: teacher-forced cross-entropy plus T5X's z-loss (z · logsumexp², z = 1e-4)
on non-padding targets, averaged over the batch's real target tokens.
Optimizer: Adafactor (T5X's settings) or AdamW, with T5X's factor-string
learning-rate schedules. Data parallel: jit over a 1-D mesh ('data',) of all
devices; parameters and optimizer state are replicated, batches split by rows.
In a multi-host run (spec_cascade.pod) the mesh spans every process's devices; each
process uploads only its devices' rows of the global batch, and only process 0
writes files other than Orbax's (which every process saves together).

MODEL_DIR layout:
    config.gin                    the operative gin config of the run
    checkpoints/<step>/state/     Orbax: {"step", "params", "opt_state"}
    checkpoints/<step>/data/      JSON: the data position (== step) and its source
    metrics.jsonl                 one JSON line per log / eval event
    export/params/                Orbax: the final float32 params tree (T5X names)
    export/spec_cascade_checkpoint.json
                                  {"format": "spec_cascade.orbax", "t5_config": {...},
                                   "vocabulary_path", "step", task, feature lengths}
The export is the checkpoint layout of spec_cascade.checkpoints, so
`checkpoints.load_params(MODEL_DIR + "/export")` reads it; `load_exported(MODEL_DIR)`
(spec_cascade.exports) returns (T5Config, params) without that module.

A killed run restarted with the same command resumes from the latest
checkpoint: step, parameters, optimizer state and data position are restored,
so it continues bit for bit as an uninterrupted run would (at most one
checkpoint period of work is lost).

This module holds the loop, `train()` and the command line; the rest, T5X-style, is in
    optim.py          learning-rate schedules and optimizers
    train_steps.py    losses, train / eval step factories, on-policy batches, sample decode
    exports.py        the export; initial and teacher parameters
    train_sources.py  the run's batch sources (offline or seqio, teacher targets)
    train_metrics.py  metrics.jsonl, TensorBoard, greedy-decode validation metrics
Their public names are importable from here too: gin files bind them as
`train_script.<name>` (`import spec_cascade.train as train_script`), which registers them
under this module's name whatever module defines them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spec_cascade import distill, parallel, stages, train_data, train_sources
from spec_cascade import train_metrics as metrics_lib
from spec_cascade.exports import (EXPORT_INFO_FILE, check_teacher_path, export_params,
                                  load_exported, load_initial_params, load_teacher,
                                  read_export_info)
from spec_cascade.models import T5Config, T5Model
from spec_cascade.optim import create_learning_rate_schedule, freeze, make_optimizer
from spec_cascade.train_steps import (Params, TrainState, benchmark_train_step, greedy_decode,
                                      jitted_init, jitted_steps, loss_sums, make_eval_step,
                                      make_train_step, on_policy_batch, resolve_model,
                                      sample_decode)

log = logging.getLogger(__name__)

# This module's public names and those it re-exports from the modules it was split into:
# gin files (train_script.<name>), scripts and tests reach them all here.
__all__ = [
    "EXPORT_INFO_FILE", "Params", "STOP_REQUESTED", "TrainResult", "TrainState",
    "TrainingStopped", "benchmark_train_step", "check_batch_size",
    "create_learning_rate_schedule", "export_params", "greedy_decode", "load_exported",
    "load_initial_params", "load_teacher", "loss_sums", "main", "make_eval_step",
    "make_optimizer", "make_train_step", "on_policy_batch", "parse_flags", "read_export_info",
    "sample_decode", "train",
]


# Set by the CLI's SIGTERM/SIGINT handlers (or by a caller): the loop then finishes its step,
# saves a checkpoint and raises TrainingStopped, so a stopped run resumes with nothing lost.
# One process only: a pod stops through SIGTERM and JAX's preemption sync point
# (`_stop_requested`), since its processes must agree on the step.
STOP_REQUESTED = threading.Event()


class TrainingStopped(Exception):
  """Training was stopped on request after saving a checkpoint at `step`."""

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step}; a checkpoint was saved, re-run to resume")
    self.step = step


# ---------------------------------------------------------------------------
# Small helpers at the edge: MODEL_DIR's files

def _check_writable(model_dir) -> None:
  from etils import epath  # pylint: disable=import-outside-toplevel
  if not model_dir:
    raise ValueError("MODEL_DIR is empty; pass --gin.MODEL_DIR=\"'/path/to/dir'\".")
  try:
    p = epath.Path(model_dir)
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".write_test_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except (OSError, PermissionError) as e:
    raise ValueError(f"MODEL_DIR {str(model_dir)!r} is not writable ({type(e).__name__}: {e}). "
                     "Pass a writable directory with --gin.MODEL_DIR=\"'/path'\".") from e


def _write_atomic(path, text: str) -> None:
  from etils import epath  # pylint: disable=import-outside-toplevel
  path = epath.Path(path)
  tmp = path.parent / (path.name + f".tmp{os.getpid()}")
  tmp.write_text(text)
  tmp.replace(path)


def _write_operative_config(model_dir) -> None:
  import gin  # pylint: disable=import-outside-toplevel
  if not gin.config_str().strip():  # not configured through gin: nothing to record
    return
  text = gin.operative_config_str()
  if jax.process_index() == 0:
    _write_atomic(os.path.join(str(model_dir), "config.gin"), text)


# ---------------------------------------------------------------------------
# The training loop

def check_batch_size(batch_size: int, num_devices: int, num_processes: int = 1) -> None:
  """ValueError unless BATCH_SIZE splits evenly over the data-parallel mesh: every device
  takes BATCH_SIZE / num_devices rows of each global batch (so a pod trains on the same
  batches as one process)."""
  if batch_size % num_devices:
    where = (f"{num_processes} processes × {num_devices // num_processes} devices"
             if num_processes > 1 else f"{num_devices} devices")
    fit = -(-batch_size // num_devices) * num_devices
    raise ValueError(f"BATCH_SIZE={batch_size} must be a multiple of the {num_devices} "
                     f"devices of the data-parallel mesh ({where}), each of which takes an "
                     f"equal share of every batch; use e.g. --gin.BATCH_SIZE={fit}.")


def _stop_requested(step: int) -> bool:
  """Whether to save and stop after `step`. A pod's processes must all stop at the same step
  (the save is collective), so there a stop comes from SIGTERM through JAX's preemption sync
  point, which they agree on; one process alone reads STOP_REQUESTED."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.reached_preemption_sync_point(step)
  return STOP_REQUESTED.is_set()


@dataclasses.dataclass
class TrainResult:
  step: int
  params: Params
  opt_state: Any
  train_metrics: dict  # the last logged training metrics
  eval_metrics: dict   # the last validation metrics ({} if none ran)


def train(*, model_dir: str, model: T5Config | T5Model | str,
          mixture_or_task_name: str | None = None,
          task_feature_lengths: Mapping[str, int] | None = None,
          total_steps: int, batch_size: int,
          dropout_rate: float | None = None,
          initial_checkpoint_path: str | None = None,
          initial_step: int | None = None,
          optimizer: optax.GradientTransformation | None = None,
          learning_rate_schedule: optax.Schedule | None = None,
          z_loss: float = 1e-4,
          random_seed: int = 0,
          checkpoint_period: int = 1000, keep_checkpoints: int = 3,
          eval_period: int = 1000, eval_steps: int = 20, infer_eval_examples: int = 0,
          log_period: int = 50, summaries: bool = True,
          bucket_by_length: bool = True, shuffle_window_batches: int = 64,
          vocab_path: str | None = None, data_cache_dir: str | None = None,
          train_source: train_data.BatchSource | None = None,
          eval_source: train_data.BatchSource | None = None,
          tokenizer: Any = None, decode_examples: Mapping[str, list] | None = None,
          distillation: distill.Distillation | None = None,
          frozen_params: Sequence[str] = (),
          step_callback: Callable[[int, dict], None] | None = None) -> TrainResult:
  """Trains `model` for total_steps steps (resuming from MODEL_DIR if possible).

  Data: MIXTURE_OR_TASK_NAME is an offline task/mixture (numpy path, length
  bucketed) or a registered seqio task (fixed shapes). Tests and scripts may
  pass `train_source` / `eval_source` (BatchSource) directly instead.
  dropout_rate overrides the config's (T5X's DROPOUT_RATE). optimizer defaults
  to make_optimizer('adafactor', learning_rate_schedule).
  checkpoint_period: steps between Orbax checkpoints (plus the final step);
  keep_checkpoints: how many to keep. eval_period / eval_steps: teacher-forced
  validation every eval_period steps on at most eval_steps batches;
  infer_eval_examples > 0 adds greedy-decoding metrics (offline tasks). log_period: steps
  between training-metric records (metrics.jsonl, the log, and with `summaries` TensorBoard
  scalars in MODEL_DIR/train and MODEL_DIR/eval: loss, accuracy, learning rate, throughput,
  eval metrics).
  initial_step: the step (learning-rate schedule and data position) a run from
  initial_checkpoint_path starts at; None = the step a stage artifact records
  (spec_cascade.stages: a long run continued on another machine), else 0.
  distillation: train `model` (the student) to match a teacher (spec_cascade.distill:
  token-level KD, sequence-level targets from the teacher, on-policy student samples).
  frozen_params: regular expressions over parameter names ('encoder/.*'): those keep their
  initial values (`optim.freeze`; FROZEN_PARAMS in gin).
  step_callback(step, metrics) runs after each step (hooks, tests).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  for name, value, low in (("TRAIN_STEPS", total_steps, 0), ("BATCH_SIZE", batch_size, 1),
                           ("checkpoint_period", checkpoint_period, 1),
                           ("log_period", log_period, 1), ("eval_period", eval_period, 1)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
  model = resolve_model(model)
  if dropout_rate is not None:
    model = T5Model(model.config.replace(dropout_rate=float(dropout_rate)))
  config = model.config
  if distillation is not None:  # before MODEL_DIR is made: a typo'd path writes nothing
    check_teacher_path(distillation.teacher_checkpoint_path)
  _check_writable(model_dir)
  _write_operative_config(model_dir)

  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  check_batch_size(batch_size, devices.size, jax.process_count())

  # Data first: a wrong task name should fail before any compilation.
  if train_source is None:
    if not mixture_or_task_name or task_feature_lengths is None:
      raise ValueError("Set MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS (or pass "
                       "train_source).")
    data = train_sources.build_data(
        mixture_or_task_name, task_feature_lengths, batch_size, random_seed,
        vocab_path=vocab_path, cache_dir=data_cache_dir, bucket=bucket_by_length,
        shuffle_window_batches=shuffle_window_batches,
        infer_eval_examples=infer_eval_examples, eval_steps=eval_steps)
  else:
    data = train_sources.RunData(train_source, eval_source, tokenizer, decode_examples,
                                 vocab_path=vocab_path and str(vocab_path))
  if data.train.batch_size != batch_size:
    raise ValueError(f"train_source.batch_size={data.train.batch_size} != BATCH_SIZE="
                     f"{batch_size}.")
  vocab_size = getattr(data.tokenizer, "vocab_size", None)
  if vocab_size is not None and vocab_size > config.vocab_size:
    raise ValueError(f"The tokenizer has {vocab_size} ids but the model's vocab_size is "
                     f"{config.vocab_size}; use a model config with vocab_size >= {vocab_size}.")

  teacher_params, teacher_config = None, None
  if distillation is not None:
    teacher, teacher_params = load_teacher(distillation.teacher_checkpoint_path, config)
    teacher_config = teacher.config
    teacher_params = parallel.put(teacher_params, replicated)
    log.info("Distilling from %s (%.2fM parameters): %s.",
             distillation.teacher_checkpoint_path, teacher.num_params() / 1e6, distillation)
    if distillation.sequence_targets != "none":
      data.train = train_sources.with_teacher_targets(
          data.train, (teacher, teacher_params), distillation, model_dir, random_seed)

  tx = optimizer or make_optimizer("adafactor", learning_rate_schedule)
  if isinstance(frozen_params, str):
    raise ValueError(f"frozen_params must be a list of patterns, got the string "
                     f"{frozen_params!r}; write [{frozen_params!r}].")
  tx = freeze(tx, tuple(frozen_params))
  schedule = learning_rate_schedule or create_learning_rate_schedule()
  train_step, on_policy_step, eval_step = jitted_steps(
      config, tx, float(z_loss), config.dropout_rate > 0, mesh, distillation, teacher_config)
  teacher_args = () if distillation is None else (teacher_params,)
  # Made on the mesh by a computation: a typed key has no host form for `parallel.put`.
  dropout_key = jax.jit(lambda: jax.random.key(random_seed + 1), out_shardings=replicated)()

  def init_state(params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract_state = jax.eval_shape(lambda: init_state(model.abstract_params()))
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)

  ckpt_dir = os.path.join(os.path.abspath(model_dir) if "://" not in str(model_dir)
                          else str(model_dir), "checkpoints")
  manager = ocp.CheckpointManager(
      ckpt_dir, item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True,
                                           enable_async_checkpointing=False))
  data_info = {"mixture_or_task_name": mixture_or_task_name, "batch_size": batch_size,
               "seed": random_seed,
               "distillation": (None if distillation is None
                                else dataclasses.asdict(distillation))}
  metrics_log = metrics_lib.MetricsLog(model_dir, summaries)
  try:
    latest = manager.latest_step()
    if latest is not None:
      restored = manager.restore(latest, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      state, saved = restored["state"], restored["data"]
      position = int(saved["position"])
      changed = {k: (saved.get(k), v) for k, v in data_info.items() if saved.get(k) != v}
      if changed:
        log.warning("Resuming with different data settings (saved, now): %s; the data "
                    "stream will not continue exactly.", changed)
      log.info("Resumed from %s/%d (data position %d).", ckpt_dir, latest, position)
    else:
      position = 0
      if initial_checkpoint_path:
        params = load_initial_params(initial_checkpoint_path, model)
        log.info("Initial parameters from %s.", initial_checkpoint_path)
        position = stages.start_step(initial_checkpoint_path, initial_step)
        if position:
          log.info("Continuing a staged run at step %d (schedule and data position; the "
                   "optimizer state starts afresh).", position)
      else:
        params = jitted_init(config)(jax.random.key(random_seed))
      state = init_state(params)
      state["step"] = jnp.asarray(position, jnp.int32)
      state = parallel.put(state, replicated)
    step = start_step = int(state["step"])
    log.info("Model %s: %.2fM parameters; %d devices; steps %d → %d.", config,
             model.num_params() / 1e6, devices.size, step, total_steps)

    def save(step_now):
      manager.save(step_now, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(dict(data_info,
                                     position=position + step_now - start_step))),
                   force=True)

    def to_device(batch):
      arrays = {k: batch[k] for k in train_data.FEATURE_KEYS}
      if data.process_local:  # this process's rows of the global batch (a seqio shard)
        return {k: jax.make_array_from_process_local_data(rows, v) for k, v in arrays.items()}
      # Every process builds the same global batch (a pure function of seed and position);
      # each uploads only the rows its own devices hold, wherever they sit in the mesh.
      return {k: jax.make_array_from_callback(v.shape, rows, lambda index, v=v: v[index])
              for k, v in arrays.items()}

    def evaluate(params, at_step) -> dict:
      out = {}
      if data.eval is not None and eval_steps:
        totals = None
        for i, batch in enumerate(data.eval.iterate(0)):
          if i >= eval_steps:
            break
          sums = jax.device_get(eval_step(params, *teacher_args, to_device(batch)))
          totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
        if totals:
          out.update(metrics_lib.eval_summary(totals))
      if data.decode_examples and data.tokenizer is not None:
        out.update(metrics_lib.decode_eval(model, params, data.decode_examples, data.tokenizer,
                                           task_feature_lengths))
      if out:
        log.info("eval step %d: %s", at_step,
                 " ".join(f"{k} {v:.4f}" for k, v in sorted(out.items())))
        metrics_log.write(dict(out, step=at_step, kind="eval"))
      return out

    train_metrics: dict = {}
    eval_metrics: dict = {}
    pending: list = []
    previous_metrics = None
    t_last, step_last = time.time(), step
    batches: Iterator = data.train.iterate(position)
    while step < total_steps:
      batch = next(batches)
      step_fn = train_step
      if on_policy_step is not None and distill.is_on_policy_step(
          random_seed, step, distillation.on_policy_fraction):
        step_fn = on_policy_step
      state, metrics = step_fn(state, to_device(batch), dropout_key, *teacher_args)
      # At most two steps in flight: the device stays busy while the next batch is built, and
      # a stop (or a save) waits for one step, not for the dozens async dispatch would queue
      # between two logs (minutes of on-policy steps on a CPU).
      if previous_metrics is not None:
        jax.block_until_ready(previous_metrics)
      previous_metrics = metrics
      pending.append(metrics)
      step += 1
      if step_callback is not None:
        step_callback(step, metrics)
      if step % log_period == 0 or step == total_steps:
        sums = jax.device_get(pending)  # waits for the steps: before the clock is read
        pending = []
        now = time.time()
        sec_per_step = (now - t_last) / max(1, step - step_last)
        # The schedule the optimizer uses, if known (gin passes both).
        lr = (float(schedule(step - 1)) if optimizer is None or learning_rate_schedule is not None
              else float("nan"))
        train_metrics = metrics_lib.train_summary(sums, lr, batch_size, sec_per_step,
                                                  distillation is not None)
        # The latest interval's pace (the first one includes compilation).
        eta = (total_steps - step) * sec_per_step
        kd_note = ("" if distillation is None else
                   f" kd {train_metrics['kd']:.4f} accept {train_metrics['acceptance']:.3f}")
        log.info("step %d/%d loss %.4f acc %.3f%s lr %.2e | %.1f ex/s | ETA %s", step,
                 total_steps, train_metrics["loss"], train_metrics["accuracy"], kd_note,
                 train_metrics["learning_rate"], train_metrics["examples_per_s"],
                 metrics_lib.format_eta(eta))
        metrics_log.write(dict(train_metrics, step=step, kind="train"))
        t_last, step_last = now, step
      # Read once: a signal between two reads would stop without the save.
      stop = _stop_requested(step)
      if step % checkpoint_period == 0 or step == total_steps or stop:
        save(step)
      if stop:
        manager.wait_until_finished()
        log.info("Stop requested: saved step %d; re-run the same command to resume.", step)
        raise TrainingStopped(step)
      if step % eval_period == 0 or step == total_steps:
        eval_metrics = evaluate(state["params"], step) or eval_metrics
    if step == start_step:
      log.info("Step %d already reaches TRAIN_STEPS=%d; exporting only.", step, total_steps)
    manager.wait_until_finished()
  finally:
    manager.close()
    metrics_log.close()

  export_params(os.path.join(str(model_dir), "export"), state["params"], config,
                data.vocab_path,
                {"step": step, "mixture_or_task_name": mixture_or_task_name,
                 "task_feature_lengths": dict(task_feature_lengths or {})})
  _write_operative_config(model_dir)
  log.info("Exported step %d to %s/export.", step, model_dir)
  return TrainResult(step, state["params"], state["opt_state"], train_metrics, eval_metrics)

# ---------------------------------------------------------------------------
# Command line (T5X-style flags)

def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  """--gin_file (repeated), --gin_bindings (repeated), --gin.NAME=VALUE (rewritten to
  the binding 'NAME = VALUE'), --gin_search_paths (comma-separated, repeated),
  --tfds_data_dir and the multi-host flags (`pod.add_flags`); `gin_cli.FlagError` on a
  mistake."""
  from spec_cascade import gin_cli  # pylint: disable=import-outside-toplevel
  return gin_cli.parse_flags(argv, "python -m spec_cascade.train", __doc__.split("\n")[0],
                             pod_flags=True)


def main(argv: Sequence[str] | None = None) -> TrainResult:
  """`python -m spec_cascade.train`: parses the flags and gin files (refusing unknown
  macros, unset required values and mistyped values, `gin_cli.configure`), then trains."""
  from spec_cascade import gin_cli  # pylint: disable=import-outside-toplevel
  gin_cli.setup_logging()  # also quiets absl: Orbax logs every file it writes
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  gin_cli.start_pod(args)
  # Not finalized: modules imported lazily during training (the offline data,
  # checkpoints) register gin configurables of their own, which a locked config refuses.
  gin_cli.configure(args)
  received = []
  # In a pod, SIGTERM stays with JAX's preemption notifier (jax.distributed installs it), which
  # makes every process stop at one agreed step (`_stop_requested`); Ctrl-C is passed on to it.
  pod_run = jax.process_count() > 1

  def request_stop(signum, _frame):
    if received:  # a second signal: stop now, losing at most one checkpoint period
      raise KeyboardInterrupt
    received.append(signum)
    log.info("Signal %d: stopping after this step (a checkpoint is saved first).", signum)
    if pod_run:
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      STOP_REQUESTED.set()

  handled = (signal.SIGINT,) if pod_run else (signal.SIGTERM, signal.SIGINT)
  previous = {sig: signal.signal(sig, request_stop) for sig in handled}
  try:
    return gin_cli.call_configured(train)
  except TrainingStopped:
    if pod_run:  # the notifier took the SIGTERM, so `received` may be empty
      sys.exit(128 + signal.SIGTERM)
    sys.exit(128 + received[0] if received else 1)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    STOP_REQUESTED.clear()


if __name__ == "__main__":
  # `python -m spec_cascade.train` runs this file as a second module named
  # __main__; gin binds the functions of `spec_cascade.train`, so run that one.
  from spec_cascade import gin_cli as _gin_cli
  from spec_cascade import train as _train_module  # pylint: disable=import-self
  sys.exit(_gin_cli.run_cli(lambda: _train_module.main() and 0))
