"""Uncertainty for the report: bootstrap replicates of quality over examples, the spread of
wall-clock latency over trials, and the intervals and bands read from them.

Quality. A point's quality is a corpus score over the task's examples (mean over trials when a
sweep repeats each point with several seeds). Its replicates resample the examples with
replacement and rescore from per-example statistics (`metrics.example_stats`). Every point of a
task is resampled with the same example draws, so differences between points (a method against
the verifier, one method against another) are paired: what all methods find hard cancels out.
Replicates are shifted so their full-corpus value is the row's quality (for ROUGE the table's score
is rouge_score's bootstrap mid, which differs from the mean of F-measures by resampling noise).

Wall-clock latency. `rel_latency` = the point's mean wall-clock over trials / the verifier's.
Each replicate perturbs both means by a normal draw with their standard error over trials
(std / √trials); with one trial there is no spread to draw from and the latency is held fixed.
Batch-1 and modelled latency have no stored spread and are held fixed.

Where the per-example statistics come from: a sweep's `metrics/<task>/<point>.json`
(`example_stats`, every trial), or, for sweeps written before it stored them, the point's
`predictions/<task>/<point>.jsonl` (targets and the first trial's predictions).

Pure numpy; no TensorFlow, JAX or matplotlib.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from spec_cascade import metrics as metrics_lib
from spec_cascade import report_curves as curves
from spec_cascade import results as results_lib
from spec_cascade.results import ResultRow

LEVEL = 0.9
REPS = 500

StatsOf = Callable[[ResultRow], "list[np.ndarray] | None"]


def load_example_stats(run_dir: str, row: ResultRow) -> list[np.ndarray] | None:
  """Per-trial [N, K] example statistics of a row's point, or None where the sweep left none.

  Unreadable or inconsistent files count as missing: the report then shows that point without
  an interval (and says how many such points there are) rather than failing as a whole.
  """
  name = results_lib.row_point_name(row)
  metrics_path = os.path.join(run_dir, "metrics", row.task, name + ".json")
  try:
    with open(metrics_path, encoding="utf-8") as f:
      stored = json.load(f).get("example_stats")
    if stored and stored.get("fields") == list(metrics_lib.stat_fields(row.metric)):
      trials = [np.asarray(t, dtype=np.float64) for t in stored["trials"]]
      if trials and all(t.ndim == 2 and len(t) == len(trials[0]) for t in trials):
        return trials
  except (OSError, ValueError, AttributeError, TypeError):
    pass
  preds_path = os.path.join(run_dir, "predictions", row.task, name + ".jsonl")
  try:
    with open(preds_path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
    return [metrics_lib.example_stats([r["target"] for r in records],
                                      [r["prediction"] for r in records], row.metric)]
  except (OSError, ValueError, KeyError, TypeError):
    return None


@dataclasses.dataclass(frozen=True)
class Replicates:
  """Bootstrap replicates per row key: `quality` [reps] (rows without per-example statistics
  are absent) and wall-clock `rel_latency` [reps]; `level` is the intervals' coverage."""
  reps: int
  level: float
  quality: Mapping[tuple, np.ndarray]
  wallclock: Mapping[tuple, np.ndarray]
  num_examples: Mapping[str, int]  # per task: how many examples were resampled

  def has_quality(self, r: ResultRow) -> bool:
    return r.key in self.quality

  def of_quality(self, r: ResultRow) -> np.ndarray:
    """The row's quality replicates; its point value repeated when it has none."""
    return self.quality.get(r.key, np.full(self.reps, r.quality))

  def of_axis(self, r: ResultRow, axis: str) -> np.ndarray:
    """The row's replicates on an x axis (only wall-clock latency varies)."""
    if axis == "wallclock" and r.key in self.wallclock:
      return self.wallclock[r.key]
    return np.full(self.reps, curves.axis_value(r, axis))


def quality_replicates(rows: Sequence[ResultRow], stats_of: StatsOf, reps: int = REPS,
                       seed: int = 0) -> tuple[dict[tuple, np.ndarray], dict[str, int]]:
  """({row key: quality replicates [reps]}, {task: examples}) — see the module docstring.

  Rows of one task share one draw of example weights (paired), per example count: a point with
  another number of examples than the rest of its task gets its own draw.
  """
  weights: dict[tuple[str, int], np.ndarray] = {}
  out: dict[tuple, np.ndarray] = {}
  sizes: dict[str, int] = {}
  for r in rows:
    if not math.isfinite(r.quality) or not r.metric:
      continue
    try:
      trials = stats_of(r)
    except ValueError:
      trials = None  # a metric without per-example statistics
    if not trials:
      continue
    n = len(trials[0])
    if n == 0 or any(len(t) != n for t in trials):
      continue
    key = (r.task, n)
    if key not in weights:
      # The task's name seeds its draw, so adding a task does not change another's intervals.
      task_seed = seed + sum(map(ord, r.task))
      weights[key] = metrics_lib.bootstrap_weights(n, reps, task_seed)
    ones = np.ones((1, n))
    full = float(np.mean([metrics_lib.corpus_scores(t, ones, r.metric)[0] for t in trials]))
    draws = np.mean([metrics_lib.corpus_scores(t, weights[key], r.metric) for t in trials], axis=0)
    out[r.key] = draws + (r.quality - full)
    sizes[r.task] = max(sizes.get(r.task, 0), n)
  return out, sizes


def wallclock_replicates(rows: Sequence[ResultRow], reps: int = REPS,
                         seed: int = 0) -> dict[tuple, np.ndarray]:
  """{row key: wall-clock rel_latency replicates [reps]} (module docstring); rows whose
  rel_latency is not finite are absent."""
  rng = np.random.default_rng(seed + 1)

  def rel_error(r: ResultRow) -> float:
    ok = (r.trials > 1 and math.isfinite(r.wallclock_std_s) and math.isfinite(r.wallclock_s)
          and r.wallclock_s > 0)
    return r.wallclock_std_s / r.wallclock_s / math.sqrt(r.trials) if ok else 0.0

  verifier_draw: dict[tuple, np.ndarray] = {}
  for r in rows:
    if r.method == "verifier":
      tt = (r.task, results_lib._norm_float(r.temperature))  # pylint: disable=protected-access
      verifier_draw[tt] = 1.0 + rel_error(r) * rng.standard_normal(reps)
  out = {}
  for r in rows:
    if not math.isfinite(r.rel_latency):
      continue
    if r.method == "verifier":
      out[r.key] = np.full(reps, r.rel_latency)
      continue
    tt = (r.task, results_lib._norm_float(r.temperature))  # pylint: disable=protected-access
    own = 1.0 + rel_error(r) * rng.standard_normal(reps)
    out[r.key] = r.rel_latency * own / verifier_draw.get(tt, np.ones(reps))
  return out


def replicates(rows: Sequence[ResultRow], stats_of: StatsOf, reps: int = REPS,
               level: float = LEVEL, seed: int = 0) -> Replicates:
  """All replicates the report reads its intervals from."""
  quality, sizes = quality_replicates(rows, stats_of, reps, seed)
  return Replicates(reps, level, quality, wallclock_replicates(rows, reps, seed), sizes)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
  """The central `level` percentile interval of replicates (−inf where some never reach)."""
  return metrics_lib.percentile_interval(values, level)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Replicates of a − b for readings that may be −inf (never reached): where both never reach
  they tie (0); where one does, the difference is ±inf."""
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  both = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
  with np.errstate(invalid="ignore"):
    return np.where(both, 0.0, a - b)


def within_noise(values: np.ndarray, level: float = LEVEL) -> bool:
  """Whether a difference's interval contains 0 (what the tables mark '≈')."""
  lo, hi = interval(values, level)
  return lo <= 0.0 <= hi


@dataclasses.dataclass(frozen=True)
class CurveData:
  """A method's points on one axis, ordered by α: x, quality, its band (NaN where unknown),
  the x spread (one standard deviation of wall-clock over trials, relative to the verifier's
  mean; 0 on other axes and with one trial) and the frontier flags."""
  rows: tuple[ResultRow, ...]
  x: np.ndarray
  quality: np.ndarray
  quality_lo: np.ndarray
  quality_hi: np.ndarray
  x_err: np.ndarray
  on_frontier: np.ndarray


def quality_band(r: ResultRow, reps: Replicates, reference: ResultRow | None = None
                 ) -> tuple[float, float]:
  """A point's quality interval; (NaN, NaN) without per-example statistics.

  With a `reference` (the verifier), the interval is the paired one of the difference
  quality − reference quality, drawn around the point: the examples every method shares move all
  points together, so the marginal interval (several BLEU on 48 examples) hides the noise that
  decides whether a point is above or below the verifier.
  """
  if not reps.has_quality(r):
    return math.nan, math.nan
  draws = reps.of_quality(r)
  if reference is not None and reps.has_quality(reference) and reference.key != r.key:
    draws = draws - reps.of_quality(reference) + reference.quality
  return interval(draws, reps.level)


def curve_data(rows: Sequence[ResultRow], axis: str, reps: Replicates | None,
               mode: str = "pareto", reference: ResultRow | None = None) -> CurveData:
  """The points, quality band (`quality_band`) and frontier flags a figure draws for a method."""
  ordered = tuple(curves.by_alpha(rows))
  pts = np.asarray([(curves.axis_value(r, axis), r.quality) for r in ordered],
                   dtype=np.float64).reshape(-1, 2)
  lo = np.full(len(ordered), math.nan)
  hi = np.full(len(ordered), math.nan)
  x_err = np.zeros(len(ordered))
  for i, r in enumerate(ordered):
    if reps is not None:
      lo[i], hi[i] = quality_band(r, reps, reference)
    if axis == "wallclock" and r.trials > 1 and math.isfinite(r.wallclock_std_s) \
        and r.wallclock_s > 0 and math.isfinite(r.rel_latency):
      x_err[i] = r.rel_latency * r.wallclock_std_s / r.wallclock_s
  on = np.zeros(len(ordered), dtype=bool)
  on[curves.frontier_indices(pts, mode)] = True
  return CurveData(ordered, pts[:, 0], pts[:, 1], lo, hi, x_err, on)


@dataclasses.dataclass(frozen=True)
class Reading:
  """The paper's two numbers for one method at one latency kind, with replicates.

  reduction: 1 − latency / the verifier's at the verifier's quality, in % (None: never reached);
  best_quality: the best quality within the verifier's latency (None: no point that fast);
  *_reps: the same per bootstrap replicate (−inf where a replicate never reaches / has no point
  within budget), best_gain_reps relative to the verifier's quality in that replicate;
  has_interval: whether the replicates vary (the verifier and every point of the method have
  per-example statistics), i.e. whether an interval means anything.
  """
  reduction: float | None
  best_quality: float | None
  reduction_reps: np.ndarray
  best_gain_reps: np.ndarray
  has_interval: bool


def read_curve(rows: Sequence[ResultRow], verifier: ResultRow, latency: str,
               reps: Replicates, mode: str = "pareto") -> Reading:
  """Reads (a) and (b) off a method's curve, and off each of its bootstrap replicates."""
  budget = curves.axis_value(verifier, latency)
  budget = budget if math.isfinite(budget) else 1.0
  pts = curves.curve_of(rows, latency)
  lat = curves.latency_at_quality(pts, verifier.quality, mode)
  best = curves.best_quality_within(pts, budget, mode)
  ordered = curves.by_alpha(rows)
  xs = np.stack([reps.of_axis(r, latency) for r in ordered], axis=1)
  qs = np.stack([reps.of_quality(r) for r in ordered], axis=1)
  v_q = reps.of_quality(verifier)
  red_reps = np.full(reps.reps, -math.inf)
  gain_reps = np.full(reps.reps, -math.inf)
  for i in range(reps.reps):
    curve = np.stack([xs[i], qs[i]], axis=1)
    lat_i = curves.latency_at_quality(curve, v_q[i], mode)
    best_i = curves.best_quality_within(curve, budget, mode)
    if lat_i is not None:
      red_reps[i] = 100.0 * (1.0 - lat_i / budget)
    if best_i is not None:
      gain_reps[i] = best_i - v_q[i]
  return Reading(None if lat is None else 100.0 * (1.0 - lat / budget), best, red_reps, gain_reps,
                 reps.has_quality(verifier) and all(reps.has_quality(r) for r in rows))
