"""num_draft_tokens='auto': the choice rule, the analytic model, and generate's use of both."""
import numpy as np
import pytest

from spec_cascade import autogamma
from spec_cascade.decoding import generate

from pairs import make_pair, random_inputs


def test_pick_keeps_the_verifier_unless_a_gamma_is_clearly_faster():
  assert autogamma.pick({0: 1.0, 1: 0.9, 3: 0.7, 5: 0.8}) == 3
  assert autogamma.pick({0: 1.0, 2: 0.99}) == 0          # within the margin: never lose
  assert autogamma.pick({0: 1.0, 2: 0.99}, margin=0.0) == 2
  assert autogamma.pick({0: 0.5, 1: 0.9, 3: 0.7}) == 0
  assert autogamma.pick({1: 0.9, 3: 0.7}) == 3           # no verifier candidate
  assert autogamma.pick({2: 0.7, 3: 0.7}) == 2           # ties: the smaller γ
  with pytest.raises(ValueError, match="no candidate"):
    autogamma.pick({0: 1.0})


def test_analytic_speedup():
  assert autogamma.expected_tokens_per_block(0.0, 5) == 1.0
  assert autogamma.expected_tokens_per_block(1.0, 5) == 6.0
  assert autogamma.expected_tokens_per_block(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
  # a = 0.8, γ = 4, c = 0.1, verify = 1.3: 3.3616 tokens for 1.7 steps.
  assert autogamma.predicted_speedup(0.8, 4, 0.1, 1.3) == pytest.approx(3.3616 / 1.7)


def test_bad_values_are_refused():
  d, v = make_pair()
  x = random_inputs(2)
  with pytest.raises(ValueError, match="positive int or 'auto'"):
    generate(d, v, x, method="spec_decode", num_draft_tokens="automatic")
  with pytest.raises(ValueError, match="method 'verifier' has none"):
    generate(d, v, x, method="verifier", num_draft_tokens="auto")
  with pytest.raises(ValueError, match="draft_candidates"):
    generate(d, v, x, method="spec_decode", num_draft_tokens="auto", draft_candidates=(0,))


def test_auto_specdecode_is_the_greedy_verifier_and_measures_once(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(4)
  ref = generate(d, v, x, method="verifier", temperature=0.0, max_decode_length=12)
  out = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=0.0,
                 max_decode_length=12, draft_candidates=(1, 3))
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  choice = out.gamma_choice
  assert set(choice.seconds) == {0, 1, 3} and out.num_draft_tokens == choice.gamma
  assert choice.gamma == autogamma.pick(choice.seconds)
  assert all(0.0 <= a <= 1.0 for a in choice.acceptance.values())
  assert set(choice.acceptance) == {1, 3}
  # The same settings and shapes reuse the choice: nothing is measured again.
  monkeypatch.setattr(autogamma, "measure", lambda *a, **k: pytest.fail("measured again"))
  again = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=0.0,
                   max_decode_length=12, draft_candidates=(1, 3))
  assert again.gamma_choice is choice
  np.testing.assert_array_equal(again.tokens, ref.tokens)


def test_auto_falls_back_to_the_verifier_alone(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(3, seed=2)
  monkeypatch.setattr(autogamma, "measure",
                      lambda run, cands, **k: ({0: 1.0, **{g: 2.0 for g in cands}}, {}))
  out = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=1.0,
                 seed=3, max_decode_length=10)
  ref = generate(None, v, x, method="verifier", temperature=1.0, seed=3, max_decode_length=10)
  assert out.num_draft_tokens == 0 and not out.counters["drafter_steps"].any()
  np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_auto_spec_cascade_never_swaps_in_the_verifier(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(3, seed=4)
  seen = {}

  def fake(run, cands, include_verifier, **k):
    seen["verifier"] = include_verifier
    return {g: 1.0 / g for g in cands}, {}
  monkeypatch.setattr(autogamma, "measure", fake)
  out = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.5,
                 num_draft_tokens="auto", temperature=1.0, seed=1, max_decode_length=10,
                 draft_candidates=(2, 4))
  ref = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.5,
                 num_draft_tokens=4, temperature=1.0, seed=1, max_decode_length=10)
  assert seen["verifier"] is False and out.num_draft_tokens == 4
  np.testing.assert_array_equal(out.tokens, ref.tokens)
