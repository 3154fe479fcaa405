"""Choosing α for a budget from measured operating points: pure functions, no JAX.

`spec_cascade.calibrate` runs the dev / test sweeps around these; the report uses them to read
"α chosen on validation → test" off two finished sweeps. A budget is a cost ceiling
('rel_latency', 'rel_latency_batch1', 'modelled_rel_latency', 'deferral_rate': at most that
value; the best quality among the α that meet it) or 'verifier_quality' (the cheapest α whose
quality reaches the verifier's, plus an optional margin).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from spec_cascade import results as results_lib

COST_BUDGETS = ("rel_latency", "rel_latency_batch1", "modelled_rel_latency", "deferral_rate")
BUDGET_KINDS = COST_BUDGETS + ("verifier_quality",)


@dataclasses.dataclass(frozen=True)
class Choice:
  """The α chosen on dev: its cost (the budget's quantity) and quality there; met: whether it
  meets the budget (False: the closest α, reported as such)."""
  alpha: float
  cost: float
  quality: float
  met: bool


def parse_budget(budget: Mapping[str, Any] | str) -> tuple[str, float]:
  """{'rel_latency': 0.7} / 'verifier_quality' / {'verifier_quality': margin} → (kind, value)."""
  if isinstance(budget, str):
    budget = {budget: 0.0}
  if not isinstance(budget, Mapping) or len(budget) != 1:
    raise ValueError(f"BUDGET must be one {{kind: value}} (kinds: {', '.join(BUDGET_KINDS)}), "
                     f"e.g. {{'rel_latency': 0.7}} or 'verifier_quality'; got {budget!r}.")
  (kind, value), = budget.items()
  if kind not in BUDGET_KINDS:
    raise ValueError(f"unknown budget {kind!r}; kinds: {', '.join(BUDGET_KINDS)}.")
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"BUDGET {kind!r} needs a number, got {value!r}.") from None
  if kind in COST_BUDGETS and not value > 0:
    raise ValueError(f"a {kind} budget must be > 0, got {value}.")
  return kind, value


def cost_of(row: results_lib.ResultRow, kind: str) -> float:
  """The quantity a budget bounds, read from a results row."""
  return float(getattr(row, "rel_latency" if kind == "verifier_quality" else kind))


def meets(cost: float, quality: float, kind: str, value: float, v_quality: float) -> bool:
  """Whether a point of this cost and quality meets the budget (kind, value)."""
  if kind == "verifier_quality":
    return quality >= v_quality + value
  return cost <= value


def choose(points: Sequence[tuple[float, float, float]], kind: str, value: float,
           v_quality: float = math.nan) -> Choice:
  """The α for a budget from dev points (α, cost, quality) (see the module docstring);
  ties go to the cheaper, then the better point."""
  pts = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
  if not pts:
    raise ValueError("no dev point has a finite cost and quality to choose from.")
  ok = [p for p in pts if meets(p[1], p[2], kind, value, v_quality)]
  if ok:
    best = (min(ok, key=lambda p: (p[1], -p[2])) if kind == "verifier_quality"
            else max(ok, key=lambda p: (p[2], -p[1])))
    return Choice(best[0], best[1], best[2], True)
  closest = (max(pts, key=lambda p: (p[2], -p[1])) if kind == "verifier_quality"
             else min(pts, key=lambda p: (p[1], -p[2])))
  return Choice(closest[0], closest[1], closest[2], False)


def bisection_alphas(points: Sequence[tuple[float, float, float]], kind: str, value: float,
                     v_quality: float = math.nan) -> list[float]:
  """Midpoints of neighbouring α (by value) on either side of the budget."""
  pts = sorted(p for p in points if math.isfinite(p[1]) and math.isfinite(p[2]))
  out = []
  for a, b in zip(pts, pts[1:]):
    if meets(a[1], a[2], kind, value, v_quality) != meets(b[1], b[2], kind, value, v_quality):
      out.append(round((a[0] + b[0]) / 2, 9))
  return out
