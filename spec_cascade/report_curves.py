"""Reading a method's curve over α: the quantity on each axis, and the frontier.

Each method traces a curve over its lenience α: points (cost, quality), where the cost is a
relative latency (batch-1, wall-clock over the sweep's batches, or modelled), the deferral rate,
or the verifier calls per generated token. The paper's main table reads two numbers off each
curve:
  (a) the latency reduction 1 − rel_latency at which the method first matches the verifier's quality;
  (b) the best quality the method reaches without exceeding the verifier's latency.

How a curve is read (the "frontier"):
- Points with NaN cost or quality are dropped.
- `mode="pareto"` (default): keep only Pareto-efficient points — sorted by cost, a point stays
  only if its quality is strictly higher than every cheaper point's. An α that is both slower and
  worse than another α is never the one a user would pick, so it must not decide the answer (this
  is what makes non-monotone curves, e.g. a cascade that overshoots the verifier's quality and then
  falls back to it as α → SpecDecode, well-defined).
- Between adjacent frontier points the curve is linear. This is achievable in expectation: running
  α₁ on a fraction w of the examples and α₂ on the rest gives the w-weighted mean of both cost and
  quality. It is therefore a conservative reading of the curve.
- `mode="convex"`: the upper concave hull of the Pareto points (equivalently, the lower convex
  hull of cost as a function of quality) — every mixture of any two α values, the most optimistic
  achievable reading. Offered for comparison; the tables use the Pareto reading.

Also the names the tables and figures give methods and metrics. Pure numpy; no TensorFlow, JAX
or matplotlib.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from spec_cascade import methods as methods_lib
from spec_cascade.results import ResultRow

FRONTIERS = ("pareto", "convex")
LATENCY_KINDS = ("batch1", "wallclock", "modelled")
_LATENCY_FIELDS = {"batch1": "rel_latency_batch1", "wallclock": "rel_latency",
                   "modelled": "modelled_rel_latency"}
# Every x axis the report draws: the three latency kinds, then the two rate axes.
AXES = LATENCY_KINDS + ("deferral", "verifier_calls")

# Row order and display names of the paper's tables: the catalogue's (unknown methods follow,
# sorted).
METHOD_ORDER = methods_lib.TABLE_NAMES
_METRIC_DISPLAY = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougelsum": "ROUGE-Lsum"}
REFERENCE_METHODS = methods_lib.REFERENCE


def display_name(method: str) -> str:
  """The paper's name of a method (the results table's name where it has none)."""
  return methods_lib.display_name(method)


def metric_name(metric: str) -> str:
  """BLEU / ROUGE-2 / ... for a metric key ('quality' when there is none)."""
  return _METRIC_DISPLAY.get(metric.lower().replace("_", "").replace("-", ""), metric or "quality")


def method_sort_key(method: str):
  """Sorts methods in the paper's table order, unknown ones after, by name."""
  return methods_lib.sort_key(method)


def _as_points(curve: Iterable[Sequence[float]]) -> np.ndarray:
  pts = np.asarray(list(curve) if not isinstance(curve, np.ndarray) else curve, dtype=np.float64)
  if pts.size == 0:
    return np.zeros((0, 2))
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f"a curve is a list of (latency, quality) pairs, got shape {pts.shape}.")
  return pts


def frontier_indices(curve: Iterable[Sequence[float]], mode: str = "pareto") -> np.ndarray:
  """Indices (into `curve`) of its frontier points, in increasing cost (module docstring).

  Of several finite points with equal cost only the best quality can be kept; of equal cost and
  quality, the first given.
  """
  if mode not in FRONTIERS:
    raise ValueError(f"frontier mode must be one of {FRONTIERS}, got {mode!r}.")
  pts = _as_points(curve)
  if len(pts) == 0:
    return np.zeros((0,), dtype=np.int64)
  idx = np.nonzero(np.all(np.isfinite(pts), axis=1))[0]
  # Cost ascending; at equal cost the best quality first, so the others are dropped.
  idx = idx[np.lexsort((-pts[idx, 1], pts[idx, 0]))]
  kept: list[int] = []
  for i in idx:
    if not kept or pts[i, 1] > pts[kept[-1], 1]:
      kept.append(int(i))
  if mode == "convex":
    hull: list[int] = []
    for i in kept:
      # Pop the last hull point while it lies on or below the chord from its predecessor to i.
      while len(hull) >= 2:
        (ox, oy), (ax, ay) = pts[hull[-2]], pts[hull[-1]]
        if (ax - ox) * (pts[i, 1] - oy) - (ay - oy) * (pts[i, 0] - ox) >= 0:
          hull.pop()
        else:
          break
      hull.append(i)
    kept = hull
  return np.asarray(kept, dtype=np.int64)


def frontier(curve: Iterable[Sequence[float]], mode: str = "pareto") -> np.ndarray:
  """The frontier of a curve, as described in the module docstring.

  Args:
    curve: points (cost, quality), shape [N, 2] or an iterable of pairs; any order.
    mode: "pareto" or "convex".
  Returns:
    float64 [K, 2], K ≤ N, sorted by cost with cost and quality both strictly increasing.
  """
  pts = _as_points(curve)
  return pts[frontier_indices(pts, mode)].reshape(-1, 2)


def latency_at_quality(curve: Iterable[Sequence[float]], target_quality: float,
                       mode: str = "pareto") -> float | None:
  """The lowest latency at which the curve's quality is ≥ `target_quality`.

  Linear interpolation between adjacent frontier points; None if the curve never reaches the
  target (or has no finite points).
  """
  f = frontier(curve, mode)
  if len(f) == 0 or not math.isfinite(target_quality):
    return None
  if f[0, 1] >= target_quality:
    return float(f[0, 0])
  for (l0, q0), (l1, q1) in zip(f[:-1], f[1:]):
    if q0 < target_quality <= q1:
      return float(l0 + (target_quality - q0) / (q1 - q0) * (l1 - l0))
  return None


def best_quality_within(curve: Iterable[Sequence[float]], max_latency: float,
                        mode: str = "pareto") -> float | None:
  """The best quality reachable at latency ≤ `max_latency`.

  When the budget falls between two adjacent frontier points the quality is interpolated at the
  budget; None if no point is within budget.
  """
  f = frontier(curve, mode)
  if len(f) == 0 or not math.isfinite(max_latency):
    return None
  within = np.nonzero(f[:, 0] <= max_latency)[0]
  if len(within) == 0:
    return None
  i = int(within[-1])
  if i + 1 < len(f):
    (l0, q0), (l1, q1) = f[i], f[i + 1]
    return float(q0 + (max_latency - l0) / (l1 - l0) * (q1 - q0))
  return float(f[i, 1])


def verifier_calls_per_token(r: ResultRow) -> float:
  """The ICLR version's rejection-rate axis: verifier calls per generated token (1 for the
  verifier alone, 1 / tokens per call for speculative methods, the deferral share for a
  sequential cascade, 0 for the drafter alone, whose rate the sweep leaves undefined)."""
  if r.method == "drafter":
    return 0.0
  t = r.tokens_per_verifier_call
  return 1.0 / t if math.isfinite(t) and t > 0 else (0.0 if t == math.inf else math.nan)


def axis_value(r: ResultRow, axis: str) -> float:
  """A row's position on one of `AXES`."""
  if axis in _LATENCY_FIELDS:
    return float(getattr(r, _LATENCY_FIELDS[axis]))
  if axis == "deferral":
    return float(r.deferral_rate)
  if axis == "verifier_calls":
    return verifier_calls_per_token(r)
  raise ValueError(f"axis must be one of {AXES}, got {axis!r}.")


def by_alpha(rows: Sequence[ResultRow]) -> list[ResultRow]:
  """Rows ordered by α, rows without α (NaN) last."""
  return sorted(rows, key=lambda r: (math.isnan(r.alpha), 0.0 if math.isnan(r.alpha) else r.alpha))


def curve_of(rows: Sequence[ResultRow], axis: str = "wallclock") -> np.ndarray:
  """[N, 2] (axis value, quality) of a method's rows, ordered by α (NaN α last)."""
  pts = [(axis_value(r, axis), r.quality) for r in by_alpha(rows)]
  return np.asarray(pts, dtype=np.float64).reshape(-1, 2)
