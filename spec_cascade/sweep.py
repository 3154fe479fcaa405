"""Sweeps: every method × α grid × temperature T × block size γ, timed against the verifier.

    python -m spec_cascade.sweep --gin_file=configs/paper/wmt_ende.gin \
        --gin.DRAFTER_CHECKPOINT_PATH="'runs/paper/models/wmt_ende_small'" \
        --gin.VERIFIER_CHECKPOINT_PATH="'runs/paper/models/wmt_ende_large'" \
        --gin.SWEEP_OUTPUT_DIR="'runs/paper/sweeps/wmt_ende'"

Output folder:
    config.gin                         the operative gin config
    results.csv                        one row per (task, method, α, T, γ)   (spec_cascade.results)
    report.md, quality_vs_*.{png,svg}  paper-style tables and plots          (spec_cascade.report)
    cost_ratio.json                    the measured c per task
    predictions/<task>/<point>.jsonl   per example: input, target, prediction, counters
    metrics/<task>/<point>.json        scores, summed counters, rates, timings of one point

Timing. Each point decodes the same length-sorted fixed-shape batches (`infer.make_batches`).
Before a compiled program's first timed run every batch shape is called once (a warm-up), so
compilation is excluded; its cost is recorded as `compile_s` (SpecCascade's rules share one
program, `share_rule_programs`). Wall-clock = Σ batch decode times,
mean (and std) over `trials` repetitions. rel_latency = wall-clock / the verifier alone's at the
same task and T (the verifier runs first; it is added to the sweep if missing).
modelled_rel_latency = (Σ drafter_steps · c + Σ verifier_calls) / Σ verifier calls of the verifier
alone (a token-level cascade is charged its deferrals, one sequential call each), with c = (drafter decode-call time) / (verifier decode-call time), measured once per task
with one-token `decode_block` calls run in a compiled loop, as the decode loop makes them
(`spec_cascade.costs`), at the sweep's batch size and input length.

Resuming. A point is done once its row is in results.csv (written last, atomically, after its
predictions and metrics). Re-running the same command skips done points; the verifier's stored
row serves as the baseline of the remaining ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from spec_cascade import decoding
from spec_cascade import gin_cli
from spec_cascade import infer
from spec_cascade import metrics as metrics_lib
from spec_cascade import methods as methods_lib
from spec_cascade import output_dir as output_dir_lib
from spec_cascade import pod
from spec_cascade import results as results_lib
from spec_cascade.infer import MethodSpec
from spec_cascade.results import ResultRow
# The plan (α grids, points) is sweep_plan's; its names stay reachable as sweep.X.
from spec_cascade.sweep_plan import (DEFAULT_NUM_ALPHAS, Point, alpha_grid,  # noqa: F401
                                     check_alpha_keys, plan_points, _as_list, _per_task)

log = logging.getLogger(__name__)

COST_RATIO_FILE = "cost_ratio.json"
DEFAULT_MAX_DECODE_LENGTH = 64


# ----------------------------------------------------------------------------------------------
# One point.

@dataclasses.dataclass
class Baseline:
  """The verifier alone at one (task, T): the denominators of the relative latencies."""
  wallclock_s: float
  verifier_calls: float


def charged_verifier_calls(method: MethodSpec, tot: Mapping[str, float]) -> float:
  """The verifier calls modelled latency charges a method: a token-level cascade pays one
  sequential call per deferral (its cache catch-up is a parallel prefill inside that call, as
  the paper charges it); every other method its verifier calls."""
  if method.method.sequential_calls:
    return float(tot["verifier_sequential_calls"])
  return float(tot["verifier_calls"])


def _row(point: Point, trial_quality: Sequence[float], metric: str, walls: list[float],
         tot: Mapping[str, float], baseline: Baseline | None, c: float, num_examples: int,
         extra: Mapping[str, Any]) -> ResultRow:
  """The results row of a point: quality and wall-clock are means over its trials (each
  trial its own seed), with their standard deviations; counters are the first trial's."""
  quality = float(np.mean(trial_quality))
  quality_std = float(np.std(trial_quality, ddof=1)) if len(trial_quality) > 1 else 0.0
  mean = float(np.mean(walls))
  std = float(np.std(walls, ddof=1)) if len(walls) > 1 else 0.0
  rel = modelled = math.nan
  if point.method.name == "verifier":
    rel = modelled = 1.0
  elif baseline is not None:
    rel = mean / baseline.wallclock_s if baseline.wallclock_s > 0 else math.nan
    if baseline.verifier_calls > 0:
      modelled = (tot["drafter_steps"] * c + charged_verifier_calls(point.method, tot)
                  ) / baseline.verifier_calls
  r = infer.rates(tot, point.method)
  return ResultRow(
      task=point.task, method=point.method.name,
      rule=point.method.rule or results_lib.default_rule(point.method.name),
      alpha=math.nan if point.alpha is None else float(point.alpha),
      temperature=point.temperature,
      num_draft_tokens=results_lib.gamma_column(point.num_draft_tokens),
      quality=quality, quality_std=quality_std, metric=metric, wallclock_s=mean,
      wallclock_std_s=std,
      rel_latency=rel, modelled_rel_latency=modelled, acceptance_rate=r["acceptance_rate"],
      rejection_rate=r["rejection_rate"], deferral_rate=r["deferral_rate"],
      tokens_per_verifier_call=r["tokens_per_verifier_call"], num_examples=num_examples,
      trials=len(walls), cost_ratio_c=float(c),
      extra={k: (repr(v) if isinstance(v, float) else str(v)) for k, v in extra.items()})


def _latency_baseline(rows: Sequence[ResultRow], task: str, t: float) -> float | None:
  key = results_lib.make_key(task, "verifier", None, t, 0)
  for r in rows:
    if r.key == key and math.isfinite(r.latency_s):
      return r.latency_s
  return None


def _batch1_latency(drafter, verifier, inputs: Sequence[tuple[np.ndarray, int]],
                    config: decoding.DecodeConfig) -> float:
  """Mean seconds per example, each decoded alone on one device (compilation excluded)."""
  one = dataclasses.replace(config, slots=None)
  x0, i0 = inputs[0]
  decoding.generate(drafter, verifier, x0, one, example_ids=np.array([i0]))  # compile
  secs = [decoding.generate(drafter, verifier, x, one, example_ids=np.array([i])).wall_s
          for x, i in inputs]
  return float(np.mean(secs))


def _baseline_from_rows(rows: Sequence[ResultRow], task: str, t: float) -> Baseline | None:
  key = results_lib.make_key(task, "verifier", None, t, 0)
  for r in rows:
    if r.key == key and math.isfinite(r.wallclock_s):
      calls = float(r.extra.get("verifier_calls_total", "nan") or "nan")
      return Baseline(r.wallclock_s, calls)
  return None


# ----------------------------------------------------------------------------------------------
# The sweep.

def _agree_across_hosts(plans, pending):
  """Multi-host: every process must run the same points (they take part in the same collective
  computations), so process 0's view of the finished points is broadcast to all."""
  flat = [(t, p) for t, ps in plans.items() for p in ps]
  mine = {(t, p.key) for t, ps in pending.items() for p in ps}
  mask = pod.broadcast_object([(t, p.key) in mine for t, p in flat])
  out = {t: [] for t in plans}
  for (t, p), keep in zip(flat, mask):
    if keep:
      out[t].append(p)
  return out


def _copy_tree(src: str, dst: str) -> None:
  """Recursive copy through tf.io.gfile (local paths and gs:// alike)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for folder, _, files in tf.io.gfile.walk(src):
    rel = os.path.relpath(folder, src) if folder != src else ""
    target = os.path.join(dst, rel) if rel else dst
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)


def _run_staged(remote: str, run: Callable[[str], Any]):
  """Runs `run(local_dir)` in a staging folder mirrored from / to `remote` (process 0 copies)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  local = tempfile.mkdtemp(prefix="spec_cascade_sweep_")
  writer = infer.is_writer()
  if tf.io.gfile.exists(remote):
    _copy_tree(remote, local)
  log.info("sweep output %s staged in %s", remote, local)
  try:
    return run(local)
  finally:
    if writer:
      _copy_tree(local, remote)
      log.info("copied the sweep's files to %s", remote)


def _open_output_dir(output_dir: str, settings: Mapping[str, Any]) -> output_dir_lib.DirLock:
  """Creates output_dir, takes its lock, checks a resume's settings, writes config.gin; the
  lock is released again if any step fails."""
  os.makedirs(output_dir, exist_ok=True)
  lock = output_dir_lib.DirLock(output_dir)
  lock.acquire()
  try:
    output_dir_lib.check_settings(output_dir, settings)
    infer.write_config(output_dir)
  except BaseException:
    lock.release()
    raise
  return lock


def run_sweep(task: str | Sequence[str], output_dir: str,
              drafter_checkpoint: str | None = None, verifier_checkpoint: str | None = None,
              methods: str | Sequence[str] = "all",
              alphas: Mapping[str, Any] | None = None, num_alphas: int = DEFAULT_NUM_ALPHAS,
              temperatures: float | Sequence[float] = (1.0,),
              num_draft_tokens: int | Sequence[int] = (5,),
              num_examples: int | None | Mapping[str, int | None] = None,
              split: str = "validation", batch_size: int = 8, trials: int = 1,
              max_decode_length: int | Mapping[str, int] = DEFAULT_MAX_DECODE_LENGTH,
              input_length: int | None | Mapping[str, int | None] = None,
              task_feature_lengths: Mapping[str, Any] | None = None,
              input_bucket: int | None = None, seed: int = 0, top_k: int = 0,
              top_p: float = 1.0, fallback_threshold: float = 0.6,
              bild_max_window: int | None = None, lossy_beta: float | None = None,
              vocabulary_path: str | None = None,
              metric: str | None = None, dtype: str = "float32",
              activation_dtype: str | None = None, matmul_dtype: str | None = None,
              drafter_config=None, verifier_config=None, model_parallel: int = 1,
              use_mesh: bool | None = None,
              cost_ratio_reps: int = 20, write_report: bool = True, progress: bool = True,
              shrink_batch: bool = True, latency_examples: int = 0,
              share_rule_programs: bool = True) -> list[ResultRow]:
  """Runs (or resumes) a sweep and returns the full results table.

  task: one task name or a list (offline tasks, or registered seqio tasks).
  methods: 'all' (`infer.ALL_METHODS`) or results-table names (see `infer.resolve_method`).
  alphas / num_alphas: the α grid per method or rule (see `alpha_grid`).
  temperatures, num_draft_tokens (γ): lists; γ-independent methods run once per T.
  num_examples, max_decode_length, input_length: a value or a {task: value} dict.
  task_feature_lengths: T5X form {'inputs': N | None, 'targets': M}; overrides input_length and
    max_decode_length (which must then be left at their defaults).
  trials: repetitions per point, each with its own seed (seed + trial); quality and
    wall-clock are their means (with standard deviations in results.csv). Others as in `infer.infer`.
  latency_examples > 0: also decode each point's first that many examples one at a time (batch
    1, on one device: the paper's latency regime) and report the mean seconds per example
    (`latency_s`, `rel_latency_batch1`; the report's first table).
  share_rule_programs: a method that runs several deferral rules (SpecCascade's, the oracle's)
    compiles them all into one program that picks the point's rule at run time
    (`DecodeConfig.rule_set`): the same outputs, one compilation instead of one per rule
    (bench/shared_rules.py: 7–8× less compile time, decode time within ~1 %).
  output_dir: a local folder, or a remote one (e.g. gs://...): then the sweep runs in a local
    staging folder (seeded from the remote one, so a resume skips finished points) and process 0
    copies it back after the sweep, also when it stops early.
  """
  if "://" in str(output_dir):
    args = dict(locals())
    return _run_staged(str(output_dir), lambda local: run_sweep(**{**args, "output_dir": local}))
  tasks = [task] if isinstance(task, str) else list(task)
  if not tasks:
    raise ValueError("no task given.")
  for t in tasks:
    infer.check_task(t)
  method_specs = infer.resolve_methods(methods)
  if "verifier" not in [m.name for m in method_specs]:
    log.info("adding the verifier alone: every latency is relative to it.")
  temps = _as_list(temperatures, "temperatures", float)
  gammas = _as_list(num_draft_tokens, "num_draft_tokens", int)
  from spec_cascade import sampling  # pylint: disable=g-import-not-at-top
  for t in temps:
    sampling.validate_sampling_params(t, top_k, top_p)
  if any(g < 1 for g in gammas):
    raise ValueError(f"num_draft_tokens must be >= 1, got {gammas}.")
  if not isinstance(trials, (int, np.integer)) or trials < 1:
    raise ValueError(f"trials must be a positive int, got {trials!r}.")
  if not isinstance(latency_examples, (int, np.integer)) or latency_examples < 0:
    raise ValueError(f"latency_examples must be an int >= 0, got {latency_examples!r}.")
  if task_feature_lengths is not None and (input_length is not None
                                           or max_decode_length != DEFAULT_MAX_DECODE_LENGTH):
    # Either would be overridden without a word.
    raise ValueError(
        f"task_feature_lengths ({task_feature_lengths!r}) and input_length / max_decode_length "
        f"({input_length!r} / {max_decode_length!r}) are both set; set one: "
        "TASK_FEATURE_LENGTHS = {'inputs': N, 'targets': M} for one pair of lengths, or "
        "TASK_FEATURE_LENGTHS = None with run_sweep.input_length / max_decode_length "
        "(a value or a {task: value} dict).")
  plans = {t: plan_points(t, method_specs, alphas, num_alphas, temps, gammas) for t in tasks}
  metrics_of = {t: infer.metric_name(t, metric) for t in tasks}

  writer = infer.is_writer()
  results_path = os.path.join(output_dir, results_lib.RESULTS_FILENAME)
  settings = dict(
      drafter=output_dir_lib.checkpoint_checksum(drafter_checkpoint) if drafter_checkpoint
      else None,
      verifier=output_dir_lib.checkpoint_checksum(verifier_checkpoint) if verifier_checkpoint
      else None,
      num_examples=num_examples, split=split, batch_size=batch_size, trials=trials,
      max_decode_length=max_decode_length, input_length=input_length,
      task_feature_lengths=task_feature_lengths, input_bucket=input_bucket, seed=seed,
      top_k=top_k, top_p=top_p, fallback_threshold=fallback_threshold,
      bild_max_window=bild_max_window, lossy_beta=lossy_beta,
      vocabulary_path=vocabulary_path, metric=metric,
      dtype=dtype, activation_dtype=activation_dtype, matmul_dtype=matmul_dtype,
      drafter_config=drafter_config, verifier_config=verifier_config,
      model_parallel=model_parallel, use_mesh=use_mesh, shrink_batch=shrink_batch,
      latency_examples=latency_examples, cost_ratio_reps=cost_ratio_reps,
      devices=infer.device_summary())
  # One writer per folder, and a resume only under the settings its results were made with;
  # a refusal on process 0 stops every process of a pod (`pod.run_on_writer`).
  lock = pod.run_on_writer(lambda: _open_output_dir(output_dir, settings))
  with contextlib.ExitStack() as held:
    if lock is not None:
      held.callback(lock.release)
    done = results_lib.done_keys(results_path)
    pending = {t: [p for p in plans[t] if p.key not in done] for t in tasks}
    pending = _agree_across_hosts(plans, pending)
    n_total = sum(len(v) for v in plans.values())
    n_pending = sum(len(v) for v in pending.values())
    log.info("sweep: %d points, %d done, %d to run, in %s", n_total, n_total - n_pending,
             n_pending, output_dir)

    if n_pending:
      all_run = [p.method for ps in pending.values() for p in ps]
      drafter, verifier = infer.load_models(drafter_checkpoint, verifier_checkpoint,
                                            all_run + [infer.resolve_method("verifier")], dtype,
                                            activation_dtype, drafter_config, verifier_config,
                                            matmul_dtype)
      mesh = infer.make_mesh(model_parallel, use_mesh)
      vocab = vocabulary_path or infer.checkpoint_vocabulary(verifier_checkpoint)
      outer = None
      if progress:
        import tqdm  # pylint: disable=g-import-not-at-top
        outer = tqdm.tqdm(total=n_pending, desc="sweep", unit="point", dynamic_ncols=True)
      try:
        for t in tasks:
          if pending[t]:
            _run_task(t, pending[t], drafter, verifier, mesh, vocab, output_dir, results_path,
                      metrics_of[t], split=split, batch_size=batch_size, trials=trials,
                      num_examples=_per_task(num_examples, t, "num_examples"),
                      lengths=infer._task_feature_lengths(  # pylint: disable=protected-access
                          task_feature_lengths, _per_task(input_length, t, "input_length"),
                          _per_task(max_decode_length, t, "max_decode_length")),
                      input_bucket=input_bucket, seed=seed, top_k=top_k, top_p=top_p,
                      fallback_threshold=fallback_threshold, bild_max_window=bild_max_window,
                      cost_ratio_reps=cost_ratio_reps, progress=progress, outer=outer,
                      shrink_batch=shrink_batch, latency_examples=int(latency_examples),
                      lossy_beta=lossy_beta, share_rule_programs=share_rule_programs)
      finally:
        if outer is not None:
          outer.close()
      if writer:
        infer.write_config(output_dir)
  rows = results_lib.read_rows(results_path) if os.path.exists(results_path) else []
  if writer and write_report and rows:
    from spec_cascade import report  # pylint: disable=g-import-not-at-top
    report.write_report(output_dir)
  return rows


def same_shape_ratio(ratios: Mapping[str, Mapping[str, Any]], shape: tuple[int, int],
                     cache_length: int) -> str | None:
  """The task whose measured cost ratio is for these shapes, if any: c depends on the pair and
  the shapes alone, so tasks decoded at the same shapes share one measurement (and agree on it;
  two measurements differ by timing noise)."""
  for task, r in ratios.items():
    if ("same_shapes_as" not in r and (r.get("batch_size"), r.get("input_length"),
                                       r.get("cache_length")) == (*map(int, shape),
                                                                  int(cache_length))):
      return task
  return None


def shared_rule_sets(points: Sequence[Point]) -> dict[str, tuple[str, ...]]:
  """{engine method: its rules among `points`} for each method that runs several rules and can
  compile them into one program (`decoding.make_spec`'s rule_set: not SpecDecode's 'verifier',
  which decodes with a program of its own)."""
  rules: dict[str, set[str]] = {}
  for p in points:
    m, r = p.method.engine_method, p.method.engine_rule
    if methods_lib.get(m).rules is methods_lib.ANY_RULE and r not in (None, "verifier"):
      rules.setdefault(m, set()).add(r)
  return {m: tuple(sorted(rs)) for m, rs in rules.items() if len(rs) > 1}


def _run_task(task: str, points: Sequence[Point], drafter, verifier, mesh, vocab: str | None,
              output_dir: str, results_path: str, metric: str, *, split: str, batch_size: int,
              trials: int, num_examples, lengths, input_bucket, seed, top_k, top_p,
              fallback_threshold, bild_max_window, cost_ratio_reps, progress, outer,
              shrink_batch, latency_examples=0, lossy_beta=None,
              share_rule_programs=True) -> None:
  input_length, max_decode_length = lengths
  settings = infer.DecodeSettings(max_decode_length=int(max_decode_length), seed=int(seed),
                                  top_k=int(top_k), top_p=float(top_p),
                                  fallback_threshold=float(fallback_threshold),
                                  bild_max_window=bild_max_window,
                                  shrink_batch=bool(shrink_batch), lossy_beta=lossy_beta)
  data = infer.load_task(task, split, num_examples, seed, vocab, input_length,
                         pair=(drafter, verifier))
  infer.check_pair(drafter, verifier, data.tokenizer)
  batches = infer.make_batches(data, batch_size, input_bucket)
  targets = [e.targets for e in data.examples]
  writer = infer.is_writer()
  # The mesh decodes take the parameters placed on it once; the per-example latencies and c
  # are timed on one device, with the bundles as loaded.
  on_mesh = infer.on_mesh(drafter, mesh), infer.on_mesh(verifier, mesh)

  # c: measured once per task (the batch shape differs between tasks) and kept for resumes.
  ratio_path = os.path.join(output_dir, COST_RATIO_FILE)
  ratios = {}
  if os.path.exists(ratio_path):
    with open(ratio_path, encoding="utf-8") as f:
      ratios = json.load(f)
  widest = max(batches, key=lambda b: b.inputs.shape[1])
  if task not in ratios:
    same = same_shape_ratio(ratios, widest.inputs.shape, settings.max_decode_length + 2)
    if same is not None:
      ratios[task] = dict(ratios[same], same_shapes_as=same)
      log.info("%s: cost ratio c = %.3f, measured for %s (the same shapes)", task,
               ratios[task]["c"], same)
  if task not in ratios:
    from spec_cascade import costs  # pylint: disable=g-import-not-at-top  (imports jax)
    ratios[task] = costs.measure_cost_ratio(drafter, verifier, widest.inputs,
                                            settings.max_decode_length + 2, cost_ratio_reps)
    log.info("%s: cost ratio c = %.3f (drafter %.2f ms, verifier %.2f ms per call)", task,
             ratios[task]["c"], 1e3 * ratios[task]["drafter_call_s"],
             1e3 * ratios[task]["verifier_call_s"])
    if writer:
      infer.write_json(ratio_path, ratios)
  c = float(ratios[task]["c"])

  existing = results_lib.read_rows(results_path) if os.path.exists(results_path) else []
  baselines = {t: _baseline_from_rows(existing, task, t) for t in {p.temperature for p in points}}
  lat_baselines = {t: _latency_baseline(existing, task, t) for t in baselines}
  lat_inputs = infer.one_at_a_time(data, latency_examples)
  compile_s: dict[tuple, float] = {}
  rule_sets = shared_rule_sets(points) if share_rule_programs else {}
  for point in points:
    if outer is not None:
      outer.set_postfix_str(f"{task} {point.name}")
    config = infer.engine_config(point.method, settings, point.alpha, point.temperature,
                                 point.num_draft_tokens,
                                 rule_set=rule_sets.get(point.method.engine_method))
    prog = config.program_key(batches[0].inputs.shape)
    first = None
    if prog not in compile_s:
      first = infer.warm_up(*on_mesh, batches, config, mesh)
    runs = []
    for trial in range(trials):
      # Each trial draws with its own seed (seed + trial): at T > 0 quality varies between
      # trials, and the table reports its mean and standard deviation.
      runs.append(infer.decode_batches(
          *on_mesh, batches, len(data.examples),
          dataclasses.replace(config, seed=config.seed + trial), mesh, progress,
          desc=f"{point.name} trial {trial + 1}/{trials}"))
    if first is not None:
      compile_s[prog] = infer.compile_seconds(first, runs[0])
    latency = (_batch1_latency(drafter, verifier, lat_inputs, config) if lat_inputs
               else math.nan)
    if point.method.name == "verifier":
      lat_baselines[point.temperature] = latency
    run = runs[0]
    trial_preds = [infer.predictions_of(data, r) for r in runs]
    preds = trial_preds[0]
    scores = infer.score(targets, preds, metric)
    trial_quality = [scores[metric]] + [infer.score(targets, p, metric)[metric]
                                        for p in trial_preds[1:]]
    tot = infer.totals(run.counters)
    walls = [r.wall_s for r in runs]
    baseline = baselines.get(point.temperature)
    if point.method.name == "verifier":
      baseline = baselines[point.temperature] = Baseline(float(np.mean(walls)),
                                                         float(tot["verifier_calls"]))
    if baseline is None:
      log.warning("%s T=%g: no verifier baseline; relative latencies are left empty.", task,
                  point.temperature)
    extra = {
        "compile_s": compile_s.get(prog, math.nan),
        "truncated_inputs": data.truncated, "input_length": data.input_length,
        "max_decode_length": settings.max_decode_length, "batch_size": batch_size,
        "hit_max_decode_length": int(np.sum(run.counters["output_tokens"]
                                            >= settings.max_decode_length)),
        "latency_examples": len(lat_inputs),
        **{f"{k}_total": v for k, v in tot.items()},
    }
    row = _row(point, trial_quality, metric, walls, tot, baseline, c, len(data.examples), extra)
    lat_base = lat_baselines.get(point.temperature)
    row = dataclasses.replace(
        row, latency_s=latency,
        rel_latency_batch1=(latency / lat_base if lat_base and math.isfinite(lat_base)
                            and lat_base > 0 else math.nan))
    # One line per point, so a long sweep's log reads as its results table while it runs.
    log.info("%s %s: %s %.2f, %.2f s (%.3f × verifier), modelled %.3f, deferral %.3f", task,
             point.name, metric, row.quality, row.wallclock_s, row.rel_latency,
             row.modelled_rel_latency, row.deferral_rate)
    if writer:
      pred_path = os.path.join(output_dir, "predictions", task, point.name + ".jsonl")
      infer.write_jsonl(pred_path, infer.prediction_records(data, preds, run))
      infer.write_json(os.path.join(output_dir, "metrics", task, point.name + ".json"), {
          "task": task, "split": split, "method": point.method.name, "rule": row.rule,
          "alpha": point.alpha, "temperature": point.temperature,
          "num_draft_tokens": row.num_draft_tokens, "metric": metric,
          "quality": row.quality, "quality_std": row.quality_std,
          "trial_quality": trial_quality, "scores": scores, "num_examples": len(data.examples),
          # Per trial, per example: what the report's bootstrap intervals resample (BLEU is a
          # corpus metric, so these are its n-gram statistics; ROUGE's are F-measures).
          "example_stats": {"fields": list(metrics_lib.stat_fields(metric)),
                            "trials": [metrics_lib.example_stats(targets, p, metric)
                                       for p in trial_preds]},
          "counters": tot, **infer.rates(tot, point.method),
          "wallclock_s": row.wallclock_s, "wallclock_std_s": row.wallclock_std_s,
          "trial_wallclock_s": walls, "batch_wallclock_s": [r.batch_wall_s for r in runs],
          "rel_latency": row.rel_latency, "modelled_rel_latency": row.modelled_rel_latency,
          "latency_s": row.latency_s, "rel_latency_batch1": row.rel_latency_batch1,
          "cost_ratio_c": c, "compile_s": extra["compile_s"],
          "truncated_inputs": data.truncated, "input_length": data.input_length,
          "longest_input": data.longest_input, "max_decode_length": settings.max_decode_length,
          "hit_max_decode_length": extra["hit_max_decode_length"], "batch_size": batch_size,
          "engine": config.record(), "predictions_file": os.path.relpath(pred_path, output_dir)})
      results_lib.merge_rows(results_path, [row])
    if outer is not None:
      outer.update()


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m spec_cascade.sweep` (see the module docstring); returns the exit status."""
  from spec_cascade import gin_cli  # pylint: disable=g-import-not-at-top
  from spec_cascade import report  # pylint: disable=g-import-not-at-top
  gin_cli.setup_logging()
  started = time.time()
  args = gin_cli.parse_flags(sys.argv[1:] if argv is None else argv,
                             "python -m spec_cascade.sweep", __doc__.splitlines()[0],
                             pod_flags=True)
  gin_cli.start_pod(args)
  gin_cli.configure(args)
  rows = gin_cli.call_configured(run_sweep)
  if infer.is_writer() and rows:
    print(report.paper_table(rows, "wallclock"))
    print(report.paper_table(rows, "modelled"))
  print(f"sweep finished in {time.time() - started:.0f} s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  from spec_cascade import sweep as _sweep_module  # pylint: disable=import-self
  sys.exit(_sweep_module.main())
