"""num_draft_tokens='auto': the choice rule, the analytic model, and generate's use of both."""
import numpy as np
import pytest

from spec_cascade import autogamma
from spec_cascade.decoding import generate

from pairs import make_pair, random_inputs


def fake_times(seconds_of):
  """A stand-in for autogamma.measure: decodes every candidate once, reports made-up times."""
  real = autogamma.measure

  def fake(run, cands, *, include_verifier, **unused):
    _, outs = real(run, cands, include_verifier=include_verifier, rounds=1, warm=False)
    return {g: seconds_of(g) for g in outs}, outs
  return fake


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


def test_auto_specdecode_is_the_greedy_verifier_and_settles(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(4)
  ref = generate(d, v, x, method="verifier", temperature=0.0, max_decode_length=12)
  out = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=0.0,
                 max_decode_length=12, draft_candidates=(1, 3), auto_warmup_rows=4)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  choice = out.gamma_choice
  assert set(choice.seconds) == {0, 1, 3} and out.num_draft_tokens == choice.gamma
  assert choice.gamma == autogamma.pick(choice.seconds)
  assert choice.settled and (choice.rows, choice.batches) == (4, 1)
  assert all(0.0 <= a <= 1.0 for a in choice.acceptance.values())
  assert set(choice.acceptance) == {1, 3}
  # The same settings and shapes reuse the settled choice: nothing is measured again.
  monkeypatch.setattr(autogamma, "measure", lambda *a, **k: pytest.fail("measured again"))
  again = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=0.0,
                   max_decode_length=12, draft_candidates=(1, 3), auto_warmup_rows=4)
  assert again.gamma_choice is choice
  np.testing.assert_array_equal(again.tokens, ref.tokens)


def test_auto_keeps_measuring_until_the_warm_up_has_enough_rows(monkeypatch):
  """One batch must not decide: the choice rests on the summed time of every warm-up batch,
  a γ far behind is no longer timed, and the choice is kept once auto_warmup_rows rows are in."""
  autogamma.clear_cache()
  d, v = make_pair()
  batches = [random_inputs(2, seed=s) for s in range(4)]
  # Per batch: γ 3 wins the first batch by far, but loses over the warm-up; γ 5 is hopeless.
  per_batch = [{0: 1.0, 1: 1.2, 3: 0.5, 5: 3.0}, {0: 1.0, 1: 0.9, 3: 1.2, 5: 3.0},
               {0: 1.0, 1: 0.5, 3: 1.6, 5: 3.0}]
  calls = []
  real = autogamma.measure

  def fake(run, cands, *, include_verifier, rounds, warm, order_seed):
    calls.append(dict(cands=tuple(cands), rounds=rounds, warm=warm))
    _, outs = real(run, cands, include_verifier=include_verifier, rounds=1, warm=False)
    return {g: per_batch[len(calls) - 1][g] for g in outs}, outs
  monkeypatch.setattr(autogamma, "measure", fake)
  kw = dict(method="spec_decode", num_draft_tokens="auto", temperature=0.0,
            max_decode_length=10, draft_candidates=(1, 3, 5), auto_warmup_rows=6)
  outs = [generate(d, v, x, **kw) for x in batches]
  chosen = [o.gamma_choice for o in outs]
  assert [c.gamma for c in chosen[:3]] == [3, 3, 1]     # provisional leaders, then settled
  assert [c.settled for c in chosen] == [False, False, True, True]
  assert [c.rows for c in chosen] == [2, 4, 6, 6]
  assert chosen[3] is chosen[2]                         # settled: not measured again
  assert calls[0] == dict(cands=(1, 3, 5), rounds=autogamma.FIRST_ROUNDS, warm=True)
  assert calls[1] == dict(cands=(1, 3, 5), rounds=autogamma.LATER_ROUNDS, warm=False)
  assert calls[2]["cands"] == (1, 3)                    # γ 5 dropped after two batches
  assert chosen[2].seconds[5] == pytest.approx(3.0) and chosen[2].seconds[1] == pytest.approx(
      (1.2 + 0.9 + 0.5) / 3)
  for x, o in zip(batches, outs):                       # every call is the greedy verifier
    ref = generate(None, v, x, method="verifier", temperature=0.0, max_decode_length=10)
    np.testing.assert_array_equal(o.tokens, ref.tokens)
    assert o.num_draft_tokens == o.gamma_choice.gamma
  with pytest.raises(ValueError, match="auto_warmup_rows"):
    generate(d, v, batches[0], **dict(kw, auto_warmup_rows=0))


def test_warmup_prunes_slow_gammas_but_keeps_the_verifier():
  w = autogamma.Warmup(live=[0, 1, 2, 5])
  cnt = {"accepted": np.array([3]), "rejected": np.array([1])}
  w.add({0: 9.0, 1: 1.0, 2: 1.1, 5: 1.5}, {g: cnt for g in (1, 2, 5)}, rows=1)
  w.prune()
  assert w.live == [0, 1, 2, 5]                         # one batch: nothing dropped yet
  w.add({0: 9.0, 1: 1.0, 2: 1.1, 5: 1.5}, {g: cnt for g in (1, 2, 5)}, rows=1)
  w.prune()
  assert w.live == [0, 1, 2] and w.leader() == 1
  c = w.choice(warmup_rows=2)
  assert c.settled and c.acceptance[1] == pytest.approx(0.75) and c.seconds[0] == 9.0


def test_auto_falls_back_to_the_verifier_alone(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(3, seed=2)
  monkeypatch.setattr(autogamma, "measure",
                      fake_times(lambda g: 1.0 if g == 0 else 2.0))
  out = generate(d, v, x, method="spec_decode", num_draft_tokens="auto", temperature=1.0,
                 seed=3, max_decode_length=10, draft_candidates=(2,))
  ref = generate(None, v, x, method="verifier", temperature=1.0, seed=3, max_decode_length=10)
  assert out.num_draft_tokens == 0 and not out.counters["drafter_steps"].any()
  np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_auto_spec_cascade_never_swaps_in_the_verifier(monkeypatch):
  autogamma.clear_cache()
  d, v = make_pair()
  x = random_inputs(3, seed=4)
  seen = {}

  real = fake_times(lambda g: 1.0 / g)

  def fake(run, cands, include_verifier, **k):
    seen["verifier"] = include_verifier
    return real(run, cands, include_verifier=include_verifier)
  monkeypatch.setattr(autogamma, "measure", fake)
  out = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.5,
                 num_draft_tokens="auto", temperature=1.0, seed=1, max_decode_length=10,
                 draft_candidates=(2, 4))
  ref = generate(d, v, x, method="spec_cascade", rule="token_v3", alpha=0.5,
                 num_draft_tokens=4, temperature=1.0, seed=1, max_decode_length=10)
  assert seen["verifier"] is False and out.num_draft_tokens == 4
  np.testing.assert_array_equal(out.tokens, ref.tokens)
