"""A report's panels: a sweep's rows grouped by (task, T, γ), and what the report reads off
each panel (the verifier's reference, each method's readings with bootstrap intervals, which
methods the main tables and figures show). Pure functions of results rows."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from spec_cascade import methods as methods_lib
from spec_cascade import report_figures as figures
from spec_cascade import report_stats as stats
from spec_cascade import results as results_lib
from spec_cascade.report_curves import REFERENCE_METHODS, axis_value, method_sort_key
from spec_cascade.results import ResultRow

def is_gamma_independent(r: ResultRow) -> bool:
  return methods_lib.gamma_independent(r.method) or r.num_draft_tokens == 0


def group_rows(rows: Sequence[ResultRow]) -> list[tuple[tuple, dict[str, list[ResultRow]]]]:
  """Splits rows into panels keyed by (task, T, γ), each a {method: rows} dict.

  γ-independent rows (drafter, verifier, sequential cascades; γ = 0) join every γ panel of their
  (task, T); if they were recorded at several γ, a panel takes those at its own γ, else those at the
  smallest γ. A (task, T) with no γ-dependent rows forms one panel with γ = None.
  """
  by_tt: dict[tuple, list[ResultRow]] = {}
  for r in rows:
    by_tt.setdefault((r.task, results_lib._norm_float(r.temperature)), []).append(r)  # pylint: disable=protected-access
  panels = []
  for (task, temp) in sorted(by_tt, key=lambda k: (k[0], k[1])):
    tt_rows = by_tt[(task, temp)]
    gammas = sorted({r.num_draft_tokens for r in tt_rows if not is_gamma_independent(r)})
    for g in gammas or [None]:
      methods: dict[str, list[ResultRow]] = {}
      for m in sorted({r.method for r in tt_rows}, key=method_sort_key):
        mrows = [r for r in tt_rows if r.method == m]
        same = [r for r in mrows if g is not None and r.num_draft_tokens == g]
        if same:
          methods[m] = same
        elif all(is_gamma_independent(r) for r in mrows):
          g0 = min(r.num_draft_tokens for r in mrows)
          methods[m] = [r for r in mrows if r.num_draft_tokens == g0]
      panels.append(((task, temp, g), methods))
  return panels


def panel_title(key: tuple) -> str:
  task, temp, g = key
  t = f"{task} · T = {temp:g}"
  return t + (f" · γ = {g}" if g is not None else "")


def panel_slug(key: tuple) -> str:
  task, temp, g = key
  return f"{task}_T{temp:g}" + (f"_g{g}" if g is not None else "")


def panel_metric(methods: dict[str, list[ResultRow]]) -> str:
  return next((r.metric for rs in methods.values() for r in rs if r.metric), "")


def verifier_row(methods: dict[str, list[ResultRow]]) -> ResultRow | None:
  """The panel's verifier row with a quality (the first, if it was recorded at several γ)."""
  return next((r for r in methods.get("verifier", []) if math.isfinite(r.quality)), None)


def has_axis(methods: dict[str, list[ResultRow]], axis: str) -> bool:
  return any(math.isfinite(axis_value(r, axis)) for rs in methods.values() for r in rs
             if r.method not in REFERENCE_METHODS)


def headline_latency(methods: dict[str, list[ResultRow]]) -> str:
  """The latency kind the summary and the main figure's method choice read: the paper's batch-1
  wall-clock where the sweep measured it, else modelled latency (batched wall-clock on a CPU
  charges a verifier block call ≈ 2.4× a one-token call, which an accelerator does not)."""
  for kind in ("batch1", "modelled", "wallclock"):
    if has_axis(methods, kind):
      return kind
  return "wallclock"


# ----------------------------------------------------------------------------------------------
# Reading the panels.


def fmt(x: float | None, spec: str = ".2f") -> str:
  return "—" if x is None or not math.isfinite(x) else format(x, spec)


def fmt_interval(values: np.ndarray, level: float, spec: str, never: str = "n.r.") -> str:
  """'[lo, hi]' of replicates; an infinite bound (a replicate that never reaches) as `never`
  (−inf) or '+∞'."""
  lo, hi = stats.interval(values, level)
  # One minus sign throughout: format's '-' beside the '−∞' bound reads as two different signs.
  end = lambda x: (never if x == -math.inf else "+∞" if x == math.inf
                   else format(x, spec).replace("-", "−"))
  return f"[{end(lo)}, {end(hi)}]"


def reference_reading(methods: dict[str, list[ResultRow]], name: str, latency: str):
  """(quality, latency) of a one-point reference method (mean over its rows), or None."""
  rs = methods.get(name)
  if not rs:
    return None
  qs = [r.quality for r in rs if math.isfinite(r.quality)]
  lats = [axis_value(r, latency) for r in rs if math.isfinite(axis_value(r, latency))]
  return (float(np.mean(qs)) if qs else math.nan), (float(np.mean(lats)) if lats else math.nan)


def no_replicates() -> stats.Replicates:
  """Replicates that do not vary: the point readings, without intervals."""
  return stats.Replicates(1, stats.LEVEL, {}, {}, {})


def panel_readings(methods: dict[str, list[ResultRow]], latency: str,
                   reps: stats.Replicates | None, mode: str = "pareto"
                   ) -> dict[str, stats.Reading]:
  """{method: Reading} of every non-reference method of a panel ({} without a verifier)."""
  ver = verifier_row(methods)
  if ver is None:
    return {}
  reps = reps or no_replicates()
  return {m: stats.read_curve(rs, ver, latency, reps, mode) for m, rs in methods.items()
          if m not in REFERENCE_METHODS}


def best_other_spec_cascade(readings: dict[str, stats.Reading]) -> str | None:
  """The SpecCascade rule (other than Token) with the largest latency reduction at the
  verifier's quality, ties and never-reached broken by the best quality within its latency."""
  cands = [m for m in figures.OTHER_SPEC_CASCADE if m in readings]
  if not cands:
    return None
  score = lambda m: tuple(-math.inf if v is None else v for v in
                          (readings[m].reduction, readings[m].best_quality))
  return max(cands, key=score)


def main_methods(methods: dict[str, list[ResultRow]], reps: stats.Replicates | None,
                 mode: str = "pareto") -> list[str]:
  """The main figure's methods present in a panel (the paper's, plus the best other rule)."""
  names = [m for m in figures.MAIN_METHODS if m in methods]
  best = best_other_spec_cascade(panel_readings(methods, headline_latency(methods), reps, mode))
  if best is None:
    best = next((m for m in figures.OTHER_SPEC_CASCADE if m in methods), None)
  return names + ([best] if best else [])
