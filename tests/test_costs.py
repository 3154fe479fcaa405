"""spec_cascade.costs: per-step costs timed inside a compiled loop (structure and errors only;
speed itself is measured by bench/, never asserted in unit tests)."""
import numpy as np
import pytest

from pairs import make_pair, random_inputs
from spec_cascade import costs


@pytest.fixture(scope="module")
def pair():
  return make_pair()


def test_cost_ratio_reports_both_steps_at_the_given_shape(pair):
  drafter, verifier = pair
  x = random_inputs(3, length=9)
  # Enough calls per loop that they outweigh the set-up's timing noise on a busy machine.
  r = costs.measure_cost_ratio(drafter, verifier, x, cache_length=12, reps=3, iters=400)
  assert r["drafter_call_s"] > 0 and r["verifier_call_s"] > 0
  assert r["c"] == pytest.approx(r["drafter_call_s"] / r["verifier_call_s"])
  assert (r["batch_size"], r["input_length"], r["cache_length"]) == (3, 9, 12)
  assert (r["reps"], r["calls_per_rep"]) == (3, 400)


def test_call_loop_wraps_offsets_and_rejects_bad_sizes(pair):
  drafter, _ = pair
  x = random_inputs(2)
  # More calls than cache positions: offsets wrap around instead of writing past the end.
  costs.call_loop(drafter, x, k=4, cache_length=6, iters=9)()
  costs.call_loop(drafter, x, k=1, cache_length=6, iters=0)()  # the set-up alone
  with pytest.raises(ValueError, match="cache_length 3 cannot hold a block of k = 4"):
    costs.call_loop(drafter, x, k=4, cache_length=3, iters=1)
  with pytest.raises(ValueError, match="iters must be ≥ 0"):
    costs.call_loop(drafter, x, k=1, cache_length=3, iters=-1)
  with pytest.raises(ValueError, match="reps and iters"):
    costs.measure_cost_ratio(drafter, drafter, x, cache_length=8, reps=0)


def test_per_call_seconds_subtracts_the_set_up():
  assert costs.per_call_seconds(1.0, 0.2, 4) == pytest.approx(0.2)
  assert costs.per_call_seconds(0.1, 0.2, 4) == 0.0  # noise never gives a negative cost


def test_ratio_is_nan_where_the_denominator_vanished_in_noise():
  assert costs.ratio(3.0, 2.0) == 1.5
  assert np.isnan(costs.ratio(1.0, 0.0))
  assert f"{costs.ratio(1.0, costs.per_call_seconds(1.0, 2.0, 4)):.3f}" == "nan"


def test_interleaved_runs_every_fn_each_round():
  calls = []
  out, t = costs.interleaved({"a": lambda: calls.append("a") or 1,
                              "b": lambda: calls.append("b") or 2}, reps=3)
  assert calls == ["a", "b"] * 4  # warm-up round + 3 timed rounds
  assert out == {"a": 1, "b": 2} and set(t) == {"a", "b"}


def test_interleaved_shuffles_each_round_without_a_warm_up():
  calls = []
  fns = {k: (lambda k=k: calls.append(k) or k) for k in "abcd"}
  out, t = costs.interleaved(fns, reps=6, warm=False, order_seed=0)
  rounds = [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)]
  assert len(rounds) == 6 and all(sorted(r) == list("abcd") for r in rounds)
  assert len(set(rounds)) > 1  # not one fixed order
  assert out == {k: k for k in "abcd"} and set(t) == set("abcd")
  with pytest.raises(ValueError, match="reps"):
    costs.interleaved(fns, reps=0, warm=False)
