"""Token-level knowledge distillation losses for training a drafter from a verifier.

DistillSpec (Zhou et al., 2023) trains the drafter q to match the verifier (teacher) p because
speculative decoding's acceptance rate is 1 − TV(q, p) per token: the closer the drafter, the
longer the accepted blocks. It finds that the divergence and the data both matter: total
variation is the quantity acceptance depends on, reverse KL is mode-seeking, forward KL (plain
distillation) mass-covering, and training on sequences sampled from the student (on-policy)
matters most. The trainer mixes these with the usual label loss:

    loss = (1 − kd_weight) · CE(labels) + kd_weight · D(p_τ ‖ q) + z-loss

where p_τ = softmax(teacher_logits / τ) (τ = the teacher temperature; the student stays at
temperature 1, so it learns the distribution the verifier samples from at T = τ) and D is one of
DIVERGENCES. All sums run over the weighted (non-padding) target positions, like
`train_steps.loss_sums`, so the trainer averages them over real tokens.
"""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np

DIVERGENCES = ("forward_kl", "reverse_kl", "tvd", "jsd")


def check_divergence(name: str) -> str:
  if name not in DIVERGENCES:
    raise ValueError(f"Unknown distillation divergence {name!r}; use one of "
                     f"{', '.join(DIVERGENCES)}.")
  return name


def token_divergence(student_logits: jax.Array, teacher_logits: jax.Array,
                     divergence: str = "forward_kl",
                     teacher_temperature: float = 1.0) -> jax.Array:
  """Per-position divergence between the teacher's and the student's next-token distributions.

  student_logits, teacher_logits: [..., V] (any float dtype; computed in float32).
  divergence: 'forward_kl' KL(p ‖ q), 'reverse_kl' KL(q ‖ p), 'tvd' ½·Σ|p − q| (one minus
    the speculative acceptance probability), 'jsd' the Jensen–Shannon divergence
    ½·KL(p ‖ m) + ½·KL(q ‖ m), m = (p + q)/2.
  teacher_temperature τ > 0: p = softmax(teacher_logits / τ); q = softmax(student_logits).
  Returns [...] float32, ≥ 0, and 0 where the two distributions are equal.
  """
  check_divergence(divergence)
  if not teacher_temperature > 0:
    raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}.")
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  log_p = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / teacher_temperature, axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  if divergence == "forward_kl":
    return jnp.sum(p * (log_p - log_q), axis=-1)
  if divergence == "reverse_kl":
    return jnp.sum(q * (log_q - log_p), axis=-1)
  if divergence == "tvd":
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)
  log_m = jnp.log(0.5 * (p + q))
  return 0.5 * jnp.sum(p * (log_p - log_m) + q * (log_q - log_m), axis=-1)


def kd_sums(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array,
            divergence: str = "forward_kl", teacher_temperature: float = 1.0
            ) -> dict[str, jax.Array]:
  """Summed distillation terms over the weighted target positions.

  student_logits, teacher_logits [B, T, V]; weights [B, T] (1 on real target tokens).
  Returns scalars: kd (Σ divergence · weight), tvd (Σ TV · weight: one minus the expected
  acceptance rate, reported whatever the training divergence) and agree (Σ weight where the
  two argmaxes agree: the greedy acceptance rate's numerator).
  """
  div = token_divergence(student_logits, teacher_logits, divergence, teacher_temperature)
  if divergence == "tvd":
    tv = div
  else:
    tv = token_divergence(student_logits, teacher_logits, "tvd", teacher_temperature)
  agree = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
  return {"kd": jnp.sum(div * weights),
          "tvd": jnp.sum(jax.lax.stop_gradient(tv) * weights),
          "agree": jnp.sum(agree * weights)}


# ---------------------------------------------------------------------------
# The recipe (gin-configurable at the trainer's edge)

SEQUENCE_TARGETS = ("none", "greedy", "sample")


@gin.configurable(module="spec_cascade.distill")
@dataclasses.dataclass(frozen=True)
class Distillation:
  """How the trainer distils a student (the drafter) from a teacher (the verifier).

  teacher_checkpoint_path: the teacher (a trainer export, T5X, Hugging Face or our checkpoint);
    it must share the student's vocabulary.
  kd_weight λ: loss = (1 − λ)·label cross-entropy + λ·divergence (+ z-loss); 1 = pure KD.
  divergence: one of DIVERGENCES (token_divergence).
  teacher_temperature τ: the teacher's distribution is softmax(logits / τ).
  sequence_targets: 'none' trains on the dataset's targets; 'greedy' / 'sample' on the
    teacher's own greedy / sampled (T = τ) outputs for the training inputs (sequence-level KD),
    generated once with the decoding engine and cached with a manifest (distill_data.py).
  on_policy_fraction: this fraction of steps (chosen by a hash of the step, so a resumed run
    picks the same ones) trains on sequences sampled from the student itself at
    on_policy_temperature, scored token by token by the teacher (pure KD on those steps).
  """
  teacher_checkpoint_path: str
  kd_weight: float = 1.0
  divergence: str = "forward_kl"
  teacher_temperature: float = 1.0
  sequence_targets: str = "none"
  on_policy_fraction: float = 0.0
  on_policy_temperature: float = 1.0

  def __post_init__(self):
    if not self.teacher_checkpoint_path:
      raise ValueError("Distillation needs TEACHER_CHECKPOINT_PATH (the verifier to distil).")
    check_divergence(self.divergence)
    if not 0.0 <= self.kd_weight <= 1.0:
      raise ValueError(f"KD_WEIGHT must be in [0, 1], got {self.kd_weight}.")
    if not self.teacher_temperature > 0:
      raise ValueError(f"TEACHER_TEMPERATURE must be > 0, got {self.teacher_temperature}.")
    if self.sequence_targets not in SEQUENCE_TARGETS:
      raise ValueError(f"SEQUENCE_TARGETS must be one of {SEQUENCE_TARGETS}, got "
                       f"{self.sequence_targets!r}.")
    if not 0.0 <= self.on_policy_fraction <= 1.0:
      raise ValueError(f"ON_POLICY_FRACTION must be in [0, 1], got {self.on_policy_fraction}.")
    if not self.on_policy_temperature > 0:
      raise ValueError("ON_POLICY_TEMPERATURE must be > 0 (the student samples its own "
                       f"sequences), got {self.on_policy_temperature}.")


def is_on_policy_step(seed: int, step: int, fraction: float) -> bool:
  """Whether training step `step` uses student-sampled sequences: a pure function of
  (seed, step), so a resumed run makes the same choices as an uninterrupted one."""
  if fraction <= 0.0:
    return False
  if fraction >= 1.0:
    return True
  return bool(np.random.default_rng([int(seed), int(step), 0x0D15]).random() < fraction)
