"""A sweep's plan: the α grid of each method and the operating points (task, method, α, T, γ)
a sweep runs, in the order it runs them (`spec_cascade.sweep`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from spec_cascade import deferral
from spec_cascade import infer
from spec_cascade import methods as methods_lib
from spec_cascade import results as results_lib
from spec_cascade.infer import MethodSpec

DEFAULT_NUM_ALPHAS = 5

def check_alpha_keys(alphas: Mapping[str, Any]) -> None:
  """ValueError for an ALPHAS key that names no method, rule or 'default' (a misspelt key
  would otherwise leave that method on the default grid without a word)."""
  for key in alphas:
    if key == "default" or key in deferral.RULES:
      continue
    try:
      if not isinstance(key, str):
        raise ValueError
      infer.resolve_method(key)
    except ValueError:
      raise ValueError(
          f"ALPHAS key {key!r} names no method or rule. Keys: 'default', a method "
          f"({', '.join(infer.ALL_METHODS)}, {methods_lib.families_text()}) or a rule "
          f"({', '.join(sorted(deferral.RULES))}).") from None


def alpha_grid(method: MethodSpec, alphas: Mapping[str, Any] | None,
               num_alphas: int = DEFAULT_NUM_ALPHAS) -> list[float | None]:
  """The α values of a method: [None] for methods without α.

  `alphas` maps a method name, a rule name or 'default' to a list of values or 'auto' (first
  match wins in that order; missing → 'auto'). 'auto' is `num_alphas` evenly spaced points over
  the rule's `deferral.RULES[rule].sweep_range` (BiLD: its `Method.alpha_sweep`), ends included.
  """
  if method.alpha_kind is None:
    return [None]
  alphas = dict(alphas or {})
  check_alpha_keys(alphas)
  spec = alphas.get(method.name, alphas.get(method.rule, alphas.get("default", "auto")))
  if isinstance(spec, str):
    if spec != "auto":
      raise ValueError(f"alphas[{method.name!r}] = {spec!r}: give a list of numbers or 'auto'.")
    if not isinstance(num_alphas, (int, np.integer)) or num_alphas < 1:
      raise ValueError(f"num_alphas must be a positive int, got {num_alphas!r}.")
    lo, hi = method.alpha_range()
    values = [float(lo)] if num_alphas == 1 else [float(x) for x in np.linspace(lo, hi, num_alphas)]
  else:
    try:
      values = [float(a) for a in (spec if isinstance(spec, (list, tuple)) else [spec])]
    except (TypeError, ValueError):
      raise ValueError(f"alphas for {method.name!r} must be numbers or 'auto', got {spec!r}.") from None
  if not values:
    raise ValueError(f"the α list of {method.name!r} is empty.")
  for a in values:
    method.validate_alpha(a)
  return list(dict.fromkeys(round(a, 9) + 0.0 for a in values))


@dataclasses.dataclass(frozen=True)
class Point:
  """One operating point of a sweep."""
  task: str
  method: MethodSpec
  alpha: float | None
  temperature: float
  num_draft_tokens: int | None  # None where γ does not apply (results.csv writes 0)

  @property
  def key(self) -> tuple:
    return results_lib.make_key(self.task, self.method.name, self.alpha, self.temperature,
                                self.num_draft_tokens)

  @property
  def name(self) -> str:
    """A file-name-safe identifier, e.g. spec_cascade_chow__T1__g5__a0.25."""
    return results_lib.point_name(self.method.name, self.alpha, self.temperature,
                                  self.num_draft_tokens)


def plan_points(task: str, methods: Sequence[MethodSpec], alphas, num_alphas: int,
                temperatures: Sequence[float], gammas: Sequence[int]) -> list[Point]:
  """Points of one task, in run order: the verifier at every T first (the baseline), then each
  method's program in turn (γ, then T, then α) so a compiled program is used contiguously."""
  points = []
  for t in temperatures:
    points.append(Point(task, infer.resolve_method("verifier"), None, float(t), None))
  for m in methods:
    if m.name == "verifier":
      continue
    grid = alpha_grid(m, alphas, num_alphas)
    for g in (gammas if m.gamma_dependent else [None]):
      for t in temperatures:
        for a in grid:
          points.append(Point(task, m, a, float(t), None if g is None else int(g)))
  return points


def _as_list(x, name: str, cast) -> list:
  items = list(x) if isinstance(x, (list, tuple)) else [x]
  try:
    out = [cast(v) for v in items]
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number or a list of numbers, got {x!r}.") from None
  if not out:
    raise ValueError(f"{name} is empty.")
  return list(dict.fromkeys(out))


def _per_task(value, task: str, name: str):
  """A setting given once or as {task: value}."""
  if isinstance(value, Mapping):
    if task not in value:
      raise ValueError(f"{name} is a per-task dict without an entry for {task!r}: {dict(value)}.")
    return value[task]
  return value
