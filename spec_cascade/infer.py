"""Inference with one method at one operating point (α, T, γ): predictions + metrics.

    python -m spec_cascade.infer --gin_file=configs/runs/infer.gin \
        --gin.MIXTURE_OR_TASK_NAME="'debian_ende'" --gin.METHOD="'spec_cascade_token_v3'" \
        --gin.ALPHA=0.3 --gin.INFER_OUTPUT_DIR="'/tmp/infer'" \
        --gin.DRAFTER_CHECKPOINT_PATH="'path/small'" --gin.VERIFIER_CHECKPOINT_PATH="'path/large'"

Writes INFER_OUTPUT_DIR/{config.gin, predictions.jsonl, metrics.json}.

This module also holds the pieces the sweep shares: method names (the results table's, e.g.
`spec_cascade_token_v3`, mapped onto the engine's method + rule), checkpoint loading (T5 and
decoder-only), one operating point's `DecodeConfig`, decoding a set of batches, counters →
rates, and scoring. A task's examples and batches are `data.eval_data`'s (re-exported here).

A decoder-only pair (Gemma, Llama, Qwen2: `hf_decoder`) reads prompts: each example's input text
(the prompt tasks of `data.prompt_tasks` format few-shot prompts; other tasks' inputs are read
as they are), tokenized with the model's own vocabulary, its BOS first and no EOS; a prediction
is the continuation up to EOS, cut at the task template's stop strings (`data.prompts`).

Examples are sorted by input length and batched (`data.eval_data.make_batches`); every batch is
padded to one fixed input length (`input_bucket=None`, one compilation per method) or to a
multiple of `input_bucket` tokens (fewer padded positions, one compilation per bucket). Inputs
longer than `input_length` are cut (EOS kept at the end; a prompt keeps BOS and its end) and
counted; `input_length=None` takes the longest input, so nothing is cut.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from spec_cascade import autogamma
from spec_cascade import decoding
from spec_cascade import deferral
from spec_cascade import gin_cli
from spec_cascade import methods as methods_lib
from spec_cascade import metrics as metrics_lib
from spec_cascade import pod
from spec_cascade import results as results_lib
# Examples and batches (data.eval_data), loading the pair (loading) and JSON records
# (output_dir) have their own modules; infer's names for them stay.
from spec_cascade.data.eval_data import (  # noqa: F401  pylint: disable=unused-import
    Batch, Example, TaskData, check_stream_batches, check_task, checkpoint_vocabulary,
    load_task, make_batches, offline_tokenizer, one_at_a_time, prompt_codec)
from spec_cascade.loading import check_pair, load_bundle, load_models  # noqa: F401
from spec_cascade.output_dir import write_json, write_jsonl  # noqa: F401
from spec_cascade.parallel import device_summary, on_mesh, run_mesh as make_mesh  # noqa: F401

log = logging.getLogger(__name__)

Bundle = decoding.Bundle

# ----------------------------------------------------------------------------------------------
# Methods: the results table's names → the engine's (method, rule).

ALL_METHODS = methods_lib.TABLE_NAMES  # 'all' of a sweep: the catalogue's table, in report order


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A results-table method resolved against the rule registry (`resolve_method`).

  name: the results-table name; engine_method / engine_rule: what `decoding.generate` runs;
  rule: the deferral rule whose α range applies ('' when α is not a rule's lenience);
  alpha_kind: None (no α), methods.ALPHA_RULE ('rule') or methods.ALPHA_ROLLBACK ('bild');
  gamma_dependent: whether γ applies (`Method.gamma`: the drafts per block, or BiLD's window)."""
  name: str
  engine_method: str
  engine_rule: str | None
  rule: str
  alpha_kind: str | None
  gamma_dependent: bool

  @property
  def method(self) -> methods_lib.Method:
    """The engine method's catalogue row."""
    return methods_lib.METHODS[self.engine_method]

  def alpha_range(self) -> tuple[float, float]:
    """The finite interval `"auto"` α grids cover."""
    if self.alpha_kind == methods_lib.ALPHA_ROLLBACK:
      return self.method.alpha_sweep
    spec = deferral.get_rule(self.rule)
    if spec.sweep_range is None:
      raise ValueError(f"method {self.name!r} (rule {self.rule!r}) has no α to sweep.")
    return spec.sweep_range

  def validate_alpha(self, alpha: float) -> None:
    if self.alpha_kind is None:
      return
    if self.alpha_kind == methods_lib.ALPHA_ROLLBACK:
      if not math.isfinite(alpha):
        raise ValueError(f"BiLD's rollback threshold (its α) must be finite, got {alpha}.")
      return
    try:
      deferral.validate_alpha(self.rule, alpha)
    except ValueError as e:
      raise ValueError(f"method {self.name!r}: {e}") from None


def resolve_method(name: str) -> MethodSpec:
  """The MethodSpec of a results-table method name (or an engine alias); ValueError otherwise."""
  if not isinstance(name, str):
    raise ValueError(f"a method name must be a string, got {name!r}.")
  t = methods_lib.lookup(name)
  # A <prefix><rule> name counts only for a registered rule.
  if t is None or (t.rule is not None and t.rule not in deferral.RULES):
    rules = ", ".join(sorted(deferral.RULES))
    raise ValueError(f"unknown method {name!r}. Methods: {', '.join(ALL_METHODS)}; also "
                     f"{methods_lib.families_text(' and ')} for any rule in {rules}.")
  m = t.engine
  rule = t.rule or ""
  # A rule's α applies only where the rule has one (spec_cascade_verifier has none).
  kind = m.alpha
  if kind == methods_lib.ALPHA_RULE and deferral.RULES[rule].alpha_range is None:
    kind = None
  return MethodSpec(t.name, m.name, t.rule, rule, kind, m.gamma is not None)


def resolve_methods(methods: str | Sequence[str]) -> list[MethodSpec]:
  """'all' or a list of names → MethodSpecs (duplicates dropped, order kept)."""
  if isinstance(methods, str):
    methods = ALL_METHODS if methods == "all" else [methods]
  specs, seen = [], set()
  for m in methods:
    s = resolve_method(m)
    if s.name not in seen:
      seen.add(s.name)
      specs.append(s)
  if not specs:
    raise ValueError("no methods given; pass methods='all' or a list such as "
                     "['verifier', 'spec_cascade_token_v3'].")
  return specs


# ----------------------------------------------------------------------------------------------
# Decoding.

@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """What stays fixed across the points of a run (besides the method, α, T and γ)."""
  max_decode_length: int = 64
  seed: int = 0
  top_k: int = 0
  top_p: float = 1.0
  fallback_threshold: float = 0.6
  bild_max_window: int | None = None  # None: γ
  token_cascade_window: int = 8
  lossy_beta: float | None = None  # lossy SpecDecode's β (≥ 1 − α); None: solved per token
  shrink_batch: bool = True  # decoding.generate's: go on with a quarter batch once most are done
  slots: int | None = None  # decoding.generate's: rows at a time for a stream (make_batches)


def stream_slots(batch_size: int, stream_batches: int) -> int | None:
  """DecodeSettings.slots for `stream_batches` (None: plain batches); every method streams."""
  check_stream_batches(stream_batches)
  return None if stream_batches == 1 else int(batch_size)


def engine_config(method: MethodSpec, settings: DecodeSettings, alpha: float | None,
                  temperature: float, num_draft_tokens: int | str | None,
                  rule_set: tuple[str, ...] | None = None) -> decoding.DecodeConfig:
  """The engine's validated `DecodeConfig` for one operating point (built once per point:
  its spec is the compiled program's key, its knobs what an α / T sweep changes).

  num_draft_tokens: γ, 'auto', or None (no γ: ignored wherever γ does not apply anyway). The
  engine gets None where its method reads no γ, so all points of such a method share one
  compiled program; BiLD's γ bounds its window unless `settings.bild_max_window` is set.
  rule_set: compile these rules (the method's among them) into one program
  (`DecodeConfig.rule_set`)."""
  if num_draft_tokens == autogamma.AUTO:
    autogamma.check(num_draft_tokens, method.engine_method)
    gamma = autogamma.AUTO
  else:
    gamma = (int(num_draft_tokens) if method.gamma_dependent and num_draft_tokens is not None
             else None)
  window = gamma if isinstance(gamma, int) else 1
  if method.method.gamma != methods_lib.GAMMA_BLOCK:
    gamma = None
  lenience = {}
  if method.alpha_kind == "bild":
    lenience["rollback_threshold"] = float(alpha)
  elif method.alpha_kind == "rule":
    lenience["alpha"] = float(alpha)
  if method.engine_rule == "lossy" and settings.lossy_beta is not None:
    lenience["beta"] = float(settings.lossy_beta)
  return decoding.DecodeConfig(
      method=method.engine_method, rule=method.engine_rule, num_draft_tokens=gamma,
      temperature=float(temperature), top_k=settings.top_k, top_p=settings.top_p,
      seed=settings.seed, max_decode_length=settings.max_decode_length,
      fallback_threshold=settings.fallback_threshold,
      bild_max_window=settings.bild_max_window or max(window, 1),
      token_cascade_window=settings.token_cascade_window,
      shrink_batch=settings.shrink_batch, slots=settings.slots, rule_set=rule_set,
      # Every batch is padded to the task's input_length: kept at that width, all batches,
      # tasks and methods of a run share their compiled programs (trimmed, the main job's sweep
      # compiled far more programs, and timed examples met new shapes mid-run).
      trim_padding=False, **lenience)


@dataclasses.dataclass
class DecodeRun:
  """tokens: int32 [N, max_decode_length] per example (0 after EOS); counters: name → [N];
  batch_wall_s: wall-clock of each batch's decode call; batch_gammas: the γ each batch ran
  with (what num_draft_tokens='auto' chose; 0 = the verifier alone; None without blocks);
  warmup_s: seconds 'auto' spent timing candidates beyond the decodes kept."""
  tokens: np.ndarray
  counters: dict[str, np.ndarray]
  batch_wall_s: list[float]
  batch_gammas: list[int | None] = dataclasses.field(default_factory=list)
  warmup_s: float = 0.0

  @property
  def wall_s(self) -> float:
    return float(sum(self.batch_wall_s))


def decode_batches(drafter: Bundle | None, verifier: Bundle | None, batches: Sequence[Batch],
                   num_examples: int, config: decoding.DecodeConfig, mesh=None,
                   progress: bool = False, desc: str = "") -> DecodeRun:
  """Runs `decoding.generate` with `config` over the batches and gathers per-example
  outputs."""
  L = config.max_decode_length
  tokens = np.zeros((num_examples, L), np.int32)
  counters = {f: np.zeros((num_examples,), np.float64) for f in decoding.COUNTER_FIELDS}
  walls, gammas, warmup = [], [], 0.0
  it = batches
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    it = tqdm.tqdm(batches, desc=desc or "batches", unit="batch", leave=False, dynamic_ncols=True)
  for b in it:
    out = decoding.generate(drafter, verifier, b.inputs, config, example_ids=b.example_ids,
                            mesh=mesh)
    n = b.num_real
    tokens[b.positions] = out.tokens[:n]
    for f in decoding.COUNTER_FIELDS:
      counters[f][b.positions] = out.counters[f][:n]
    walls.append(out.wall_s)
    gammas.append(out.num_draft_tokens)
    warmup += out.warmup_s
  return DecodeRun(tokens, counters, walls, gammas, warmup)


def warm_up(drafter, verifier, batches: Sequence[Batch], config: decoding.DecodeConfig,
            mesh=None) -> dict[tuple[int, int], tuple[int, float]]:
  """Calls each distinct batch shape once so compilation is out of the timed runs.

  Returns {shape: (index of the batch used, first-call wall-clock s)}; compilation time is that
  minus the same batch's later (timed) wall-clock.
  """
  done = {}
  for i, b in enumerate(batches):
    shape = tuple(b.inputs.shape)
    if shape in done:
      continue
    t0 = time.perf_counter()
    decoding.generate(drafter, verifier, b.inputs, config, example_ids=b.example_ids,
                      mesh=mesh)
    done[shape] = (i, time.perf_counter() - t0)
  return done


def compile_seconds(first_calls: Mapping[tuple, tuple[int, float]], run: DecodeRun) -> float:
  """Σ over shapes of (first call − the same batch's timed call): the compilation estimate."""
  return float(sum(max(0.0, t - run.batch_wall_s[i]) for i, t in first_calls.values()))


def totals(counters: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Counters summed over examples (exact integers except `deferred`)."""
  out = {}
  for f, v in counters.items():
    s = float(np.sum(v))
    out[f] = int(round(s)) if f != "deferred" else s
  return out


def rates(tot: Mapping[str, float], method: MethodSpec) -> dict[str, float]:
  """docs/method.md §7 rates from summed counters.

  acceptance = accepted / drafted; rejection = rejected blocks / output tokens; deferral =
  tokens from the verifier / tokens (1 for the verifier alone, 0 for the drafter alone);
  tokens per verifier call = output tokens / verifier calls.
  """
  nan = math.nan
  n_tok = tot["output_tokens"]
  div = lambda a, b: a / b if b else nan
  if not method.method.uses_drafter:
    deferral_rate = 1.0
  elif not method.method.uses_verifier:
    deferral_rate = 0.0
  else:
    deferral_rate = div(tot["deferred"], n_tok)
  return {"acceptance_rate": div(tot["accepted"], tot["drafted"]),
          "rejection_rate": div(tot["rejected"], n_tok),
          "deferral_rate": deferral_rate,
          "tokens_per_verifier_call": div(n_tok, tot["verifier_calls"])}


# ----------------------------------------------------------------------------------------------
# Scoring and files.

def metric_name(task: str, metric: str | None = None) -> str:
  """The primary metric: `metric` if given, else the task family's (BLEU / ROUGE-2 / exact
  match / accuracy: `metrics.primary_metric`)."""
  if metric:
    if metric not in metrics_lib.METRICS:
      raise ValueError(f"metric must be one of {', '.join(metrics_lib.METRICS)}; got "
                       f"{metric!r}.")
    return metric
  try:
    return metrics_lib.primary_metric(task)
  except ValueError as e:
    raise ValueError(f"{e} Set `metric` ('bleu' or 'rouge2', ...) for this task.") from None


def score(targets: Sequence[str], predictions: Sequence[str], metric: str) -> dict[str, float]:
  """All scores of the metric's family: {'bleu'}, {'rouge1', 'rouge2', 'rougeLsum'},
  {'exact_match', 'f1'} or {'accuracy'}."""
  return metrics_lib.scores(list(targets), list(predictions), metric)


def bootstrap_interval(targets: Sequence[str], predictions: Sequence[str], metric: str,
                       reps: int = 200, seed: int = 0, level: float = 0.9
                       ) -> tuple[float, float]:
  """The `level` bootstrap interval of the corpus metric over examples (`metrics`' resampler,
  which the report's confidence bands use too)."""
  return metrics_lib.bootstrap_interval(targets, predictions, metric, reps, seed, level)


def predictions_of(data: TaskData, run: DecodeRun) -> list[str]:
  return [data.tokenizer.decode(row) for row in run.tokens]


def prediction_records(data: TaskData, predictions: Sequence[str], run: DecodeRun) -> list[dict]:
  """One JSON-able record per example: input, target, prediction and its counters."""
  out = []
  for p, (ex, pred) in enumerate(zip(data.examples, predictions)):
    counters = {f: (float(run.counters[f][p]) if f == "deferred" else int(run.counters[f][p]))
                for f in decoding.COUNTER_FIELDS}
    out.append({"index": ex.index, "id": ex.id, "input": ex.inputs, "target": ex.targets,
                "prediction": pred, "counters": counters})
  return out


def is_writer() -> bool:
  """Only process 0 of a multi-host run writes files."""
  return pod.is_writer()


def write_config(output_dir: str) -> None:
  """Writes the operative gin config to output_dir/config.gin (when gin configured this run)."""
  from spec_cascade import gin_cli  # pylint: disable=g-import-not-at-top
  text = gin_cli.operative_config_text()
  if text.strip():
    results_lib.atomic_write_text(os.path.join(output_dir, "config.gin"), text)


def _task_feature_lengths(task_feature_lengths, input_length, max_decode_length):
  if task_feature_lengths:
    unknown = set(task_feature_lengths) - {"inputs", "targets"}
    if unknown:
      raise ValueError(f"task_feature_lengths has unknown keys {sorted(unknown)}; use "
                       "{'inputs': N or None, 'targets': M}.")
    input_length = task_feature_lengths.get("inputs", input_length)
    max_decode_length = task_feature_lengths.get("targets", max_decode_length)
  return input_length, max_decode_length


# ----------------------------------------------------------------------------------------------
# The entry point.

def infer(task: str, output_dir: str, method: str = "verifier",
          drafter_checkpoint: str | None = None, verifier_checkpoint: str | None = None,
          alpha: float | None = None, temperature: float = 1.0, num_draft_tokens: int | str = 5,
          num_examples: int | None = None, split: str = "validation", batch_size: int = 8,
          max_decode_length: int = 64, input_length: int | None = None,
          task_feature_lengths: Mapping[str, int | None] | None = None,
          input_bucket: int | None = None, seed: int = 0, top_k: int = 0, top_p: float = 1.0,
          fallback_threshold: float = 0.6, bild_max_window: int | None = None,
          lossy_beta: float | None = None,
          vocabulary_path: str | None = None, metric: str | None = None,
          dtype: str = "float32", activation_dtype: str | None = None,
          matmul_dtype: str | None = None,
          drafter_config=None, verifier_config=None, model_parallel: int = 1,
          use_mesh: bool | None = None, warmup: bool = True, progress: bool = True,
          shrink_batch: bool = True, stream_batches: int = 1) -> dict[str, Any]:
  """Decodes a task split with one method at one (α, T, γ); writes predictions and metrics.

  Files in output_dir: config.gin (operative gin config), predictions.jsonl (per example: input,
  target, prediction, counters), metrics.json (scores, summed counters, rates, timings).
  `alpha` is the method's lenience (a rule's α, BiLD's rollback threshold); methods without one
  ignore it, methods with one need it. lossy_beta: lossy SpecDecode's β (≥ 1 − α; None: the
  β that makes the target sum to one, solved per token). shrink_batch: see `decoding.generate`. dtype,
  activation_dtype, matmul_dtype: see `load_bundle`.
  stream_batches > 1: decode that many batches' worth of examples per call, batch_size rows at
  a time with continuous batching (`make_batches`, `DecodeConfig.slots`; same
  outputs; seq_cascade streams the drafter over every example, then the verifier over the
  deferred ones; on a mesh, batch_size must be a multiple of its data size and
  model_parallel 1). Returns the metrics dict.
  """
  ms = resolve_method(method)
  check_task(task)
  if ms.alpha_kind is not None and alpha is None:
    lo, hi = ms.alpha_range()
    raise ValueError(f"method {ms.name!r} needs alpha (its sweep range is [{lo}, {hi}]).")
  if ms.alpha_kind is not None:
    ms.validate_alpha(float(alpha))
  input_length, max_decode_length = _task_feature_lengths(task_feature_lengths, input_length,
                                                          max_decode_length)
  settings = DecodeSettings(max_decode_length=int(max_decode_length), seed=int(seed),
                            top_k=int(top_k), top_p=float(top_p),
                            fallback_threshold=float(fallback_threshold),
                            bild_max_window=bild_max_window, shrink_batch=bool(shrink_batch),
                            slots=stream_slots(batch_size, stream_batches),
                            lossy_beta=lossy_beta)
  config = engine_config(ms, settings, alpha, temperature, num_draft_tokens)  # validates
  the_metric = metric_name(task, metric)
  drafter, verifier = load_models(drafter_checkpoint, verifier_checkpoint, [ms], dtype,
                                  activation_dtype, drafter_config, verifier_config,
                                  matmul_dtype)
  vocab = vocabulary_path or checkpoint_vocabulary(verifier_checkpoint or drafter_checkpoint)
  data = load_task(task, split, num_examples, seed, vocab, input_length,
                   pair=(drafter, verifier))
  check_pair(drafter, verifier, data.tokenizer)
  batches = make_batches(data, batch_size, input_bucket, stream_batches)
  mesh = make_mesh(model_parallel, use_mesh)
  drafter, verifier = on_mesh(drafter, mesh), on_mesh(verifier, mesh)
  if is_writer():
    os.makedirs(output_dir, exist_ok=True)
    write_config(output_dir)
  if config.auto:
    # γ is chosen for these inputs: a choice made on another task's (same shapes) would carry
    # that task's acceptance rate over.
    autogamma.clear_cache()
  first = warm_up(drafter, verifier, batches, config, mesh) if warmup else {}
  run = decode_batches(drafter, verifier, batches, len(data.examples), config, mesh, progress,
                       desc=ms.name)
  preds = predictions_of(data, run)
  scores = score([e.targets for e in data.examples], preds, the_metric)
  tot = totals(run.counters)
  result = {
      "task": task, "split": split, "method": ms.name, "rule": ms.rule,
      "alpha": None if ms.alpha_kind is None else float(alpha),
      "temperature": float(temperature),
      "num_draft_tokens": (num_draft_tokens if num_draft_tokens == autogamma.AUTO
                           else int(num_draft_tokens) if ms.gamma_dependent else 0),
      # What 'auto' chose per batch shape (0: the verifier alone), else the fixed γ.
      "chosen_num_draft_tokens": sorted({g for g in run.batch_gammas if g is not None}),
      # Time 'auto' spent timing its candidates (not in wallclock_s; 0 without 'auto').
      "auto_warmup_s": run.warmup_s,
      "metric": the_metric, "quality": scores[the_metric], "scores": scores,
      "num_examples": len(data.examples), "split_size": data.split_size,
      "input_length": data.input_length, "truncated_inputs": data.truncated,
      "longest_input": data.longest_input, "max_decode_length": settings.max_decode_length,
      "hit_max_decode_length": int(np.sum(run.counters["output_tokens"]
                                          >= settings.max_decode_length)),
      "batch_size": batch_size, "num_batches": len(batches),
      "counters": tot, **rates(tot, ms),
      "wallclock_s": run.wall_s, "compile_s": compile_seconds(first, run) if first else None,
      "tokens_per_s": tot["output_tokens"] / run.wall_s if run.wall_s > 0 else None,
      "engine": config.record(),
      "mesh": None if mesh is None else dict(mesh.shape),
  }
  if is_writer():
    write_jsonl(os.path.join(output_dir, "predictions.jsonl"),
                prediction_records(data, preds, run))
    write_json(os.path.join(output_dir, "metrics.json"), result)
  return result


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m spec_cascade.infer` (see the module docstring); returns the exit status."""
  from spec_cascade import gin_cli  # pylint: disable=g-import-not-at-top
  gin_cli.setup_logging()
  args = gin_cli.parse_flags(sys.argv[1:] if argv is None else argv, "python -m spec_cascade.infer",
                             __doc__.splitlines()[0], pod_flags=True)
  gin_cli.start_pod(args)
  gin_cli.configure(args)
  result = gin_cli.call_configured(infer)
  print(f"{result['method']} on {result['task']}: {result['metric']} = {result['quality']:.2f}, "
        f"{result['num_examples']} examples in {result['wallclock_s']:.2f} s")
  return 0


if __name__ == "__main__":
  # `python -m` runs this file as __main__; gin binds the functions of spec_cascade.infer.
  from spec_cascade import infer as _infer_module  # pylint: disable=import-self
  sys.exit(_infer_module.main())
