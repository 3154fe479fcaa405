"""`num_draft_tokens='auto'`: the block size γ measured, not guessed.

The best γ depends on things only a measurement on the user's machine knows: how often the
drafter agrees with the verifier on these inputs at this temperature (acceptance a), what a
drafter step costs against a verifier step (c), what a verifier call scoring γ + 1 tokens costs
against a one-token call (≈ 1 on an accelerator, up to 2.5 on a CPU at batch ≥ 8), and the
per-block overheads of the loop. The analytic speed-up of Leviathan et al.,

    E[tokens per block] / cost per block = ((1 − a^(γ+1)) / (1 − a)) / (γ·c + v(γ)),

(`predicted_speedup`) captures the first three but not the last, and on small models the last
decides. So 'auto' times what it chooses between: it decodes each batch it is given with every
candidate γ (and, for lossless SpecDecode, with the verifier alone), in interleaved rounds in a
fresh random order so that machine noise and cache effects hit all alike, and keeps the one
with the least time summed over the batches seen (`measure`, `Warmup`, `pick`). SpecDecode falls
back to the verifier alone unless some γ beats it by a margin: its outputs are the verifier's
either way, so it never loses. Other speculative methods keep their best γ (the verifier alone
would change their outputs).

One batch is not enough to choose on: how often a drafter is accepted varies from input to
input, and one example at batch 1 picked γ that lost on the rest (bench/RESULTS.md, session
11). So the choice stays provisional until the warm-up has decoded `warmup_rows` rows (16 by
default): the first batch is timed in three rounds after an untimed (compiling) call, later
ones in one, and a γ more than `PRUNE_FACTOR` slower than the best after two batches is
dropped, so the warm-up costs a few decodes per candidate. While provisional, a call returns
the output of the candidate currently ahead (its tokens are what that γ decodes; nothing is
decoded twice). The settled choice is cached per (pair, method, rule, α, T, batch shape,
lengths) for the process: `clear_cache()` when the inputs change kind (another task — its
acceptance rate differs; `infer` does so per run), and `generate` reports the γ it ran with
(`GenerateOutput.num_draft_tokens`, 0 = the verifier alone) and what was measured
(`GenerateOutput.gamma_choice`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from spec_cascade import methods

AUTO = "auto"
DEFAULT_CANDIDATES = (1, 2, 3, 5)
# The verifier alone is kept unless a γ is at least this much faster on the warm-up batch:
# timing noise on a busy machine must not make 'auto' pick a γ that loses.
DEFAULT_MARGIN = 0.05
# Rows the warm-up decodes before the choice is kept for good.
DEFAULT_WARMUP_ROWS = 16
# After two warm-up batches, a γ this much slower (summed) than the best is no longer timed.
PRUNE_FACTOR = 1.25
FIRST_ROUNDS = 3
LATER_ROUNDS = 1


@dataclasses.dataclass(frozen=True)
class GammaChoice:
  """gamma: the chosen γ (0 = the verifier alone). seconds: candidate → seconds to decode a
  warm-up batch, the mean over the batches it was timed on (key 0 = the verifier alone, when
  it was a candidate; candidates dropped early were timed on fewer batches). acceptance:
  candidate → accepted / (accepted + rejected) drafts over its warm-up decodes, the per-draft
  acceptance rate estimate (the maximum-likelihood one for independent acceptances).
  rows / batches: how much of the input the measurement rests on; settled: False while the
  warm-up goes on (the next call with these settings measures again)."""
  gamma: int
  seconds: Mapping[int, float]
  acceptance: Mapping[int, float]
  rows: int = 0
  batches: int = 0
  settled: bool = True

  def speedup(self) -> float | None:
    """Measured speed-up of the choice over the verifier alone (None if not measured)."""
    if 0 not in self.seconds:
      return None
    return self.seconds[0] / self.seconds[self.gamma]


def check(num_draft_tokens: Any, method: str) -> None:
  """Refuses 'auto' for methods without a block size, and anything else that is not a γ."""
  if isinstance(num_draft_tokens, str):
    if num_draft_tokens != AUTO:
      raise ValueError(f"num_draft_tokens must be a positive int or {AUTO!r}, got "
                       f"{num_draft_tokens!r}.")
    if method not in methods.BLOCK_METHODS:
      raise ValueError(f"num_draft_tokens={AUTO!r} picks the block size of the speculative "
                       f"methods ({', '.join(methods.BLOCK_METHODS)}); method {method!r} has "
                       "none.")


def expected_tokens_per_block(acceptance: float, gamma: int) -> float:
  """Tokens a block emits when each draft is accepted independently with probability a."""
  if acceptance >= 1.0:
    return gamma + 1.0
  return (1.0 - acceptance ** (gamma + 1)) / (1.0 - acceptance)


def predicted_speedup(acceptance: float, gamma: int, c: float, verify_cost: float = 1.0,
                      drafter_steps: int | None = None) -> float:
  """Leviathan et al.'s speed-up over the verifier alone: tokens per block over the block's
  cost in verifier steps (drafter_steps · c + verify_cost; drafter_steps defaults to γ)."""
  steps = gamma if drafter_steps is None else drafter_steps
  return expected_tokens_per_block(acceptance, gamma) / (steps * c + verify_cost)


def pick(seconds: Mapping[int, float], margin: float = DEFAULT_MARGIN) -> int:
  """The fastest γ; 0 (the verifier alone) when present and no γ is faster by `margin`."""
  gammas = {g: s for g, s in seconds.items() if g > 0}
  if not gammas:
    raise ValueError("no candidate γ was measured.")
  best = min(gammas, key=lambda g: (gammas[g], g))
  if 0 in seconds and gammas[best] * (1.0 + margin) >= seconds[0]:
    return 0
  return best


def acceptance_estimate(counters: Mapping[str, Any]) -> float:
  """accepted / (accepted + rejected) over a decode's per-row counters: the per-draft
  acceptance rate's maximum-likelihood estimate when drafts are accepted independently."""
  acc = float(np.sum(counters["accepted"]))
  rej = float(np.sum(counters["rejected"]))
  return acc / max(acc + rej, 1.0)


def measure(run: Callable[[int], Any], candidates: Sequence[int], *,
            include_verifier: bool, rounds: int = FIRST_ROUNDS, warm: bool = True,
            order_seed: int = 0) -> tuple[dict[int, float], dict[int, Any]]:
  """Times `run(γ)` (γ = 0: the verifier alone) for every candidate: one untimed call each
  (compilation; skipped with warm=False), then `rounds` rounds, each in a fresh random order
  (`costs.interleaved`). run returns a GenerateOutput. Returns ({γ: median seconds},
  {γ: the last GenerateOutput})."""
  from spec_cascade import costs  # pylint: disable=import-outside-toplevel
  keys = ([0] if include_verifier else []) + [int(g) for g in candidates]
  outs, seconds = costs.interleaved({g: functools.partial(run, g) for g in keys}, rounds,
                                    warm=warm, order_seed=order_seed)
  return seconds, outs


@dataclasses.dataclass
class Warmup:
  """What 'auto' has measured for one setting so far. live: the candidates still timed (0 =
  the verifier alone); total / timed: summed median seconds and batch count per candidate;
  accepted / rejected: drafts summed over each candidate's warm-up decodes."""
  live: list[int]
  total: dict[int, float] = dataclasses.field(default_factory=dict)
  timed: dict[int, int] = dataclasses.field(default_factory=dict)
  accepted: dict[int, float] = dataclasses.field(default_factory=dict)
  rejected: dict[int, float] = dataclasses.field(default_factory=dict)
  rows: int = 0
  batches: int = 0

  def add(self, seconds: Mapping[int, float], counters: Mapping[int, Mapping[str, Any]],
          rows: int) -> None:
    """One warm-up batch of `rows` rows: each live candidate's seconds and counters."""
    for g in self.live:
      self.total[g] = self.total.get(g, 0.0) + float(seconds[g])
      self.timed[g] = self.timed.get(g, 0) + 1
      if g > 0:
        self.accepted[g] = self.accepted.get(g, 0.0) + float(np.sum(counters[g]["accepted"]))
        self.rejected[g] = self.rejected.get(g, 0.0) + float(np.sum(counters[g]["rejected"]))
    self.rows += int(rows)
    self.batches += 1

  def prune(self, factor: float = PRUNE_FACTOR) -> None:
    """Stops timing the γ more than `factor` slower (summed over the same batches) than the
    best, once two batches are in. The verifier alone stays: it is SpecDecode's fallback."""
    if self.batches < 2:
      return
    best = min(self.total[g] for g in self.live if g > 0)
    self.live = [g for g in self.live if g == 0 or self.total[g] <= factor * best]

  def leader(self, margin: float = DEFAULT_MARGIN) -> int:
    """The live candidate with the least summed time (`pick`: the verifier alone unless
    beaten by `margin`)."""
    return pick({g: self.total[g] for g in self.live}, margin)

  def choice(self, warmup_rows: int, margin: float = DEFAULT_MARGIN) -> GammaChoice:
    return GammaChoice(
        gamma=self.leader(margin),
        seconds={g: self.total[g] / self.timed[g] for g in self.total},
        acceptance={g: acceptance_estimate({"accepted": self.accepted[g],
                                            "rejected": self.rejected[g]})
                    for g in self.accepted},
        rows=self.rows, batches=self.batches, settled=self.rows >= warmup_rows)


_CHOICES: dict[tuple, GammaChoice] = {}
_WARMUPS: dict[tuple, Warmup] = {}


def choice_key(drafter, verifier, method: str, rule: str | None, inputs_shape: tuple,
               **settings) -> tuple:
  """What a choice depends on. The pair enters by identity (its parameters' objects)."""
  return (id(drafter.params), id(verifier.params), drafter.model.config,
          verifier.model.config, method, rule, tuple(inputs_shape),
          tuple(sorted((k, repr(v)) for k, v in settings.items())))


def cached(key: tuple) -> GammaChoice | None:
  """The settled choice for `key`, if the warm-up is over."""
  return _CHOICES.get(key)


def remember(key: tuple, choice: GammaChoice) -> GammaChoice:
  _CHOICES[key] = choice
  return choice


def warm_up_batch(key: tuple, run: Callable[[int], Any], candidates: Sequence[int], *,
                  include_verifier: bool, rows: int, warmup_rows: int = DEFAULT_WARMUP_ROWS,
                  margin: float = DEFAULT_MARGIN) -> tuple[GammaChoice, Any]:
  """Times the live candidates on one batch of `rows` rows (`measure`), adds it to the
  warm-up for `key`, and returns (the choice so far, the leader's GenerateOutput on this
  batch). Once the warm-up holds `warmup_rows` rows the choice is settled and `cached`."""
  state = _WARMUPS.setdefault(
      key, Warmup(live=([0] if include_verifier else []) + [int(g) for g in candidates]))
  first = state.batches == 0
  live = [g for g in state.live if g > 0]
  seconds, outs = measure(run, live, include_verifier=0 in state.live,
                          rounds=FIRST_ROUNDS if first else LATER_ROUNDS, warm=first,
                          order_seed=state.batches)
  state.add(seconds, {g: outs[g].counters for g in outs}, rows)
  choice = state.choice(warmup_rows, margin)
  state.prune()
  if choice.settled:
    remember(key, choice)
    del _WARMUPS[key]
  return choice, outs[choice.gamma]


def clear_cache() -> None:
  _CHOICES.clear()
  _WARMUPS.clear()
