"""Choosing α for a budget (spec_cascade.calibrate): the choice on synthetic curves, and dev →
test end to end on the offline setting with the random test pair."""
import json
import math

import numpy as np
import pytest

import sweep_helpers
from spec_cascade import calibrate, decoding, pretrained

# (α, cost, quality): cost falls and quality falls as α grows, as for a lenience.
CURVE = [(0.0, 1.0, 30.0), (0.25, 0.8, 29.5), (0.5, 0.6, 28.0), (0.75, 0.45, 25.0),
         (1.0, 0.3, 20.0)]


def test_cost_budget_takes_the_best_quality_within_it():
  c = calibrate.choose(CURVE, "rel_latency", 0.65)
  assert (c.alpha, c.met) == (0.5, True)
  assert calibrate.choose(CURVE, "rel_latency", 0.8).alpha == 0.25  # 0.8 itself is within
  assert calibrate.choose(CURVE, "deferral_rate", 5.0).alpha == 0.0


def test_verifier_quality_takes_the_cheapest_point_reaching_it():
  assert calibrate.choose(CURVE, "verifier_quality", 0.0, v_quality=29.0).alpha == 0.25
  assert calibrate.choose(CURVE, "verifier_quality", 1.0, v_quality=28.0).alpha == 0.25
  c = calibrate.choose(CURVE, "verifier_quality", 0.0, v_quality=31.0)
  assert (c.alpha, c.met) == (0.0, False)  # closest: the best quality


def test_unmet_budget_names_the_closest_alpha():
  c = calibrate.choose(CURVE, "rel_latency", 0.1)
  assert (c.alpha, c.cost, c.met) == (1.0, 0.3, False)
  record = {"method": "m", "budget": {"rel_latency": 0.1}, "met_on_dev": False, "alpha": 1.0,
            "dev_split": "validation", "dev_points": CURVE, "dev_cost": 0.3,
            "dev_quality": 20.0, "dev_verifier_quality": 30.0}
  text = calibrate.summary(record)
  assert "no α of m meets rel_latency ≤ 0.1" in text and "closest is α = 1" in text


def test_bisection_adds_midpoints_where_the_budget_flips():
  assert calibrate.bisection_alphas(CURVE, "rel_latency", 0.7) == [0.375]
  assert calibrate.bisection_alphas(CURVE, "verifier_quality", 0.0, 27.0) == [0.625]
  assert calibrate.bisection_alphas(CURVE, "rel_latency", 2.0) == []
  assert calibrate.bisection_alphas(CURVE + [(0.1, math.nan, 1.0)], "rel_latency", 0.7) == [0.375]


@pytest.mark.parametrize("budget,match", [
    ({"latency": 0.5}, "unknown budget 'latency'"), ({"rel_latency": 0}, "must be > 0"),
    ({"rel_latency": "fast"}, "needs a number"), ({"a": 1, "b": 2}, "one {kind: value}"),
    ("speed", "unknown budget 'speed'")])
def test_bad_budgets_are_refused(budget, match):
  with pytest.raises(ValueError, match=match):
    calibrate.parse_budget(budget)
  assert calibrate.parse_budget("verifier_quality") == ("verifier_quality", 0.0)


@pytest.mark.slow
def test_dev_choice_is_evaluated_on_test_and_resumes(tmp_path_factory, monkeypatch, capsys):
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  sweep_helpers.use_env(monkeypatch, env)
  out = tmp_path_factory.mktemp("cal")
  kw = dict(task="debian_ende", output_dir=str(out), method="spec_cascade_chow",
            budget={"deferral_rate": 0.5}, num_alphas=3, refine_steps=1, temperature=0.0,
            num_draft_tokens=3, drafter_checkpoint=pretrained.offline_drafter_path(),
            verifier_checkpoint=pretrained.offline_verifier_path(), num_examples=6,
            batch_size=4, task_feature_lengths={"inputs": None, "targets": 8},
            progress=False, cost_ratio_reps=2)
  record = calibrate.calibrate(**kw)
  assert record["met_on_dev"] and record["dev_cost"] <= 0.5
  dev = record["dev_points"]
  assert len(dev) >= 3 and record["alpha"] in [p["alpha"] for p in dev]
  # No dev point meeting the budget has a better quality than the chosen one.
  assert all(p["quality"] <= record["dev_quality"] for p in dev if p["cost"] <= 0.5)
  assert record["test_split"] == "test" and record["test_examples"] == 6
  lo, hi = record["test_quality_ci90"]
  assert lo <= record["test_quality"] <= hi
  saved = json.loads((out / "calibration.json").read_text())
  assert saved["alpha"] == record["alpha"]
  assert "chosen on validation for deferral_rate ≤ 0.5" in calibrate.summary(record)
  # A second run decodes nothing new.
  calls = []
  real = decoding.generate
  monkeypatch.setattr(decoding, "generate",
                      lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
  again = calibrate.calibrate(**kw)
  assert calls == [] and again["alpha"] == record["alpha"]
  # An impossible budget: no α meets it; the CLI says so with the closest α (exit 1).
  gin_file = tmp_path_factory.mktemp("g") / "c.gin"
  gin_file.write_text("include 'configs/runs/calibrate.gin'\n"
                      "calibrate_script.calibrate.progress = False\n")
  rc = calibrate.main([f"--gin_file={gin_file}", "--gin.MIXTURE_OR_TASK_NAME='debian_ende'",
                       "--gin.METHOD='spec_cascade_chow'",
                       "--gin.BUDGET={'modelled_rel_latency': 0.001}",
                       f"--gin.CALIBRATE_OUTPUT_DIR='{out / 'impossible'}'",
                       "--gin.NUM_ALPHAS=2", "--gin.REFINE_STEPS=0", "--gin.TEMPERATURE=0.0",
                       "--gin.NUM_EXAMPLES=4", "--gin.BATCH_SIZE=4",
                       "--gin.TASK_FEATURE_LENGTHS={'inputs': None, 'targets': 6}"])
  text = capsys.readouterr().out
  assert rc == 1, text
  assert "no α of spec_cascade_chow meets modelled_rel_latency ≤ 0.001" in text
  assert not (out / "impossible" / "test").exists()
  assert np.isfinite(json.loads((out / "impossible" / "calibration.json").read_text())["alpha"])
