"""Choosing α for a budget: `python -m spec_cascade.calibrate`.

    python -m spec_cascade.calibrate --gin_file=configs/runs/calibrate.gin \
        --gin.MIXTURE_OR_TASK_NAME="'debian_ende'" --gin.METHOD="'spec_cascade_token_v3'" \
        --gin.BUDGET="{'rel_latency': 0.7}" --gin.CALIBRATE_OUTPUT_DIR="'/tmp/cal'"

Given a method and a budget, α is chosen on a development split and evaluated once on a
held-out split, as a deployed cascade would be tuned:

1. dev: a sweep (`spec_cascade.sweep.run_sweep`, so resumable, with its progress bar and its
   settings guard) over NUM_ALPHAS points across the method's α range, then REFINE_STEPS
   bisection rounds: each adds the midpoint of every pair of neighbouring α where the budget
   flips from met to not met.
2. the choice (`choose`): for a cost budget ('rel_latency', 'rel_latency_batch1',
   'modelled_rel_latency', 'deferral_rate': at most that value) the best quality among the α
   that meet it; for 'verifier_quality' (value ignored, or a margin added to the verifier's
   quality) the cheapest α whose quality reaches the verifier's, cost read as wall-clock
   relative latency.
3. test: that α (and the verifier alone) on TEST_SPLIT; the report gives the budget reached
   there and the quality with a 90 % bootstrap interval over examples.

Files: OUTPUT_DIR/dev, OUTPUT_DIR/test (sweep folders) and OUTPUT_DIR/calibration.json. When no
α meets the budget on dev, the answer says so and names the closest α (exit status 1).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Mapping, Sequence

from spec_cascade import gin_cli
from spec_cascade import infer
from spec_cascade import sweep
# The choice itself is pure and lives in `budget` so the report can use it without JAX.
from spec_cascade.budget import (BUDGET_KINDS, COST_BUDGETS, Choice,  # pylint: disable=unused-import
                                 bisection_alphas, choose, cost_of, meets, parse_budget)

log = logging.getLogger(__name__)


def _method_points(rows, method: str, temperature: float, gamma: int):
  return [(r.alpha, r, r.quality) for r in rows
          if r.method == method and r.temperature == temperature
          and r.num_draft_tokens in (gamma, 0) and math.isfinite(r.alpha)]


def calibrate(task: str, output_dir: str, method: str, budget: Mapping[str, Any] | str,
              dev_split: str = "validation", test_split: str = "test",
              num_alphas: int = 9, refine_steps: int = 3, temperature: float = 1.0,
              num_draft_tokens: int = 5, **sweep_kwargs) -> dict[str, Any]:
  """Chooses α for `budget` on dev_split, evaluates it on test_split (module docstring).
  sweep_kwargs go to every `sweep.run_sweep` call (checkpoints, examples, lengths, batch, ...).
  Returns the calibration record (also written to output_dir/calibration.json)."""
  kind, value = parse_budget(budget)
  spec = infer.resolve_method(method)
  if spec.alpha_kind is None:
    raise ValueError(f"method {method!r} has no α to calibrate.")
  if not isinstance(refine_steps, int) or refine_steps < 0:
    raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")
  gamma = int(num_draft_tokens) if spec.gamma_dependent else 0
  common = dict(sweep_kwargs, task=task, methods=[spec.name], temperatures=[float(temperature)],
                num_draft_tokens=[int(num_draft_tokens)])
  if kind == "rel_latency_batch1" and not sweep_kwargs.get("latency_examples"):
    raise ValueError("a rel_latency_batch1 budget needs LATENCY_EXAMPLES > 0 (the examples "
                     "timed one at a time).")
  lo, hi = spec.alpha_range()
  grid = sweep.alpha_grid(spec, {spec.name: "auto"}, num_alphas)
  dev_dir = os.path.join(output_dir, "dev")
  for step in range(refine_steps + 1):
    rows = sweep.run_sweep(output_dir=dev_dir, split=dev_split, alphas={spec.name: grid},
                           write_report=False, **common)
    v_quality = next(r.quality for r in rows if r.method == "verifier"
                     and r.temperature == float(temperature))
    # Only this round's grid: a resumed folder holds later rounds' points too, and reading
    # them here would bisect elsewhere than the first run did.
    in_grid = lambda a: any(abs(a - g) < 1e-9 for g in grid)
    pts = [(a, cost_of(r, kind), q) for a, r, q in
           _method_points(rows, spec.name, float(temperature), gamma) if in_grid(a)]
    new = [a for a in bisection_alphas(pts, kind, value, v_quality) if a not in grid
           and lo <= a <= hi]
    if step == refine_steps or not new:
      break
    log.info("calibrate: refining between α points: %s", new)
    grid = sorted(set(grid) | set(new))
  choice = choose(pts, kind, value, v_quality)
  record: dict[str, Any] = {
      "task": task, "method": spec.name, "budget": {kind: value}, "temperature": temperature,
      "num_draft_tokens": num_draft_tokens, "dev_split": dev_split, "test_split": test_split,
      "dev_points": [{"alpha": a, "cost": c, "quality": q} for a, c, q in sorted(pts)],
      "dev_verifier_quality": v_quality, "alpha": choice.alpha, "met_on_dev": choice.met,
      "dev_cost": choice.cost, "dev_quality": choice.quality}
  if choice.met:
    test_rows = sweep.run_sweep(output_dir=os.path.join(output_dir, "test"), split=test_split,
                                alphas={spec.name: [choice.alpha]}, write_report=False,
                                **common)
    row = next(r for a, r, _ in _method_points(test_rows, spec.name, float(temperature), gamma)
               if abs(a - choice.alpha) < 1e-9)
    v_row = next(r for r in test_rows if r.method == "verifier"
                 and r.temperature == float(temperature))
    preds = os.path.join(output_dir, "test", "predictions", task,
                         sweep.Point(task, spec, choice.alpha, float(temperature), gamma).name
                         + ".jsonl")
    with open(preds, encoding="utf-8") as f:
      recs = [json.loads(line) for line in f]
    ci = infer.bootstrap_interval([r["target"] for r in recs], [r["prediction"] for r in recs],
                                  row.metric)
    record.update(test_cost=cost_of(row, kind), test_quality=row.quality, test_quality_ci90=ci,
                  test_verifier_quality=v_row.quality, metric=row.metric,
                  test_met=meets(cost_of(row, kind), row.quality, kind, value, v_row.quality),
                  test_examples=row.num_examples)
  if infer.is_writer():
    os.makedirs(output_dir, exist_ok=True)
    infer.write_json(os.path.join(output_dir, "calibration.json"), record)
  return record


def summary(record: Mapping[str, Any]) -> str:
  """What a user reads: the α, the budget reached on dev and test, the test quality and CI."""
  (kind, value), = record["budget"].items()
  want = ("the verifier's quality" + (f" + {value:g}" if value else "")
          if kind == "verifier_quality" else f"{kind} ≤ {value:g}")
  cost_name = "rel_latency" if kind == "verifier_quality" else kind
  if not record["met_on_dev"]:
    return (f"no α of {record['method']} meets {want} on {record['dev_split']} "
            f"({len(record['dev_points'])} points); the closest is α = {record['alpha']:.6g} "
            f"({cost_name} {record['dev_cost']:.3f}, quality {record['dev_quality']:.2f}, "
            f"verifier {record['dev_verifier_quality']:.2f}). Relax the budget or widen the "
            "α range.")
  lo, hi = record["test_quality_ci90"]
  return (f"{record['method']}: α = {record['alpha']:.6g} chosen on {record['dev_split']} for "
          f"{want} ({cost_name} {record['dev_cost']:.3f}, quality {record['dev_quality']:.2f}); "
          f"on {record['test_split']} ({record['test_examples']} examples): {cost_name} "
          f"{record['test_cost']:.3f}, {record['metric']} {record['test_quality']:.2f} "
          f"(90 % CI {lo:.2f}–{hi:.2f}; verifier {record['test_verifier_quality']:.2f}); budget "
          f"{'met' if record['test_met'] else 'NOT met'} on test.")


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m spec_cascade.calibrate` (see the module docstring); returns the exit status."""
  gin_cli.setup_logging()
  args = gin_cli.parse_flags(sys.argv[1:] if argv is None else argv,
                             "python -m spec_cascade.calibrate", __doc__.splitlines()[0],
                             pod_flags=True)
  gin_cli.start_pod(args)
  gin_cli.configure(args)
  record = gin_cli.call_configured(calibrate)
  print(summary(record))
  return 0 if record["met_on_dev"] else 1


if __name__ == "__main__":
  from spec_cascade import calibrate as _calibrate_module  # pylint: disable=import-self
  sys.exit(_calibrate_module.main())
