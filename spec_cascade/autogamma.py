"""`num_draft_tokens='auto'`: the block size γ measured, not guessed.

The best γ depends on things only a measurement on the user's machine knows: how often the
drafter agrees with the verifier on these inputs at this temperature (acceptance a), what a
drafter step costs against a verifier step (c), what a verifier call scoring γ + 1 tokens costs
against a one-token call (≈ 1 on an accelerator, up to 2.5 on a CPU at batch ≥ 8), and the
per-block overheads of the loop. The analytic speed-up of Leviathan et al.,

    E[tokens per block] / cost per block = ((1 − a^(γ+1)) / (1 − a)) / (γ·c + v(γ)),

(`predicted_speedup`) captures the first three but not the last, and on small models the last
decides. So 'auto' times what it chooses between: it decodes the first batch it is given with
every candidate γ (and, for lossless SpecDecode, with the verifier alone), in interleaved rounds
so that machine noise hits all alike, and keeps the fastest (`measure`, `pick`). SpecDecode
falls back to the verifier alone unless some γ beats it by a margin: its outputs are the
verifier's either way, so it never loses. Other speculative methods keep their best γ (the
verifier alone would change their outputs).

The choice is cached per (pair, method, rule, α, T, batch shape, lengths), so in a loop over
batches only the first call pays for the measurement; `generate` reports the γ it ran with
(`GenerateOutput.num_draft_tokens`, 0 = the verifier alone).
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


@dataclasses.dataclass(frozen=True)
class GammaChoice:
  """gamma: the chosen γ (0 = the verifier alone). seconds: candidate → median seconds to
  decode the warm-up batch (key 0 = the verifier alone, when it was a candidate).
  acceptance: candidate → accepted / (accepted + rejected) drafts, the per-draft acceptance
  rate estimate (the maximum-likelihood one for independent acceptances)."""
  gamma: int
  seconds: Mapping[int, float]
  acceptance: Mapping[int, float]

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
            include_verifier: bool, rounds: int = 5) -> tuple[dict[int, float],
                                                              dict[int, float]]:
  """Times `run(γ)` (γ = 0: the verifier alone) for every candidate: one untimed call each
  (compilation), then `rounds` interleaved rounds (`costs.interleaved`). run returns a
  GenerateOutput. Returns ({γ: median seconds}, {γ: acceptance estimate})."""
  from spec_cascade import costs  # pylint: disable=import-outside-toplevel
  keys = ([0] if include_verifier else []) + [int(g) for g in candidates]
  outs, seconds = costs.interleaved({g: functools.partial(run, g) for g in keys}, rounds)
  return seconds, {g: acceptance_estimate(outs[g].counters) for g in keys if g > 0}


_CHOICES: dict[tuple, GammaChoice] = {}


def choice_key(drafter, verifier, method: str, rule: str | None, inputs_shape: tuple,
               **settings) -> tuple:
  """What a choice depends on. The pair enters by identity (its parameters' objects)."""
  return (id(drafter.params), id(verifier.params), drafter.model.config,
          verifier.model.config, method, rule, tuple(inputs_shape),
          tuple(sorted((k, repr(v)) for k, v in settings.items())))


def cached(key: tuple) -> GammaChoice | None:
  return _CHOICES.get(key)


def remember(key: tuple, choice: GammaChoice) -> GammaChoice:
  _CHOICES[key] = choice
  return choice


def clear_cache() -> None:
  _CHOICES.clear()
