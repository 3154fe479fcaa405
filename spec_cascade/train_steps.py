"""The trainer's compiled work: losses, train / eval step factories, on-policy batches, and the
sampled / greedy decode used for validation and on-policy distillation.

Steps are pure functions of (state, batch, keys) for `jax.jit`; `jitted_steps` compiles them
on the data-parallel mesh ('data',) once per (config, optimizer, loss settings, mesh):
parameters and optimizer state replicated, batches split by rows.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spec_cascade import distill, optim, train_data
from spec_cascade.models import T5Config, T5Model, get_config
from spec_cascade.models.t5 import shift_right

Params = Any
TrainState = dict  # {"step": int32 [], "params": Params, "opt_state": optax state}


def loss_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
              z_loss: float) -> dict[str, jax.Array]:
  """Summed (not averaged) loss terms over the weighted target tokens.

  logits [B, T, V] float32, targets [B, T] int, weights [B, T] float.
  Returns scalars: cross_entropy (−log p(target)), z_loss (z · logsumexp²,
  T5X's auxiliary loss that keeps the softmax normaliser near 1), weight
  (number of real tokens) and correct (argmax hits).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return {
      "cross_entropy": jnp.sum((log_z - target_logit) * weights),
      "z_loss": jnp.sum(z_loss * jnp.square(log_z) * weights),
      "weight": jnp.sum(weights),
      "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
  }


def _batch_loss(model: T5Model, params: Params, batch: Mapping[str, jax.Array],
                dropout_rng: jax.Array | None, z_loss: float,
                kd: distill.Distillation | None = None, teacher: T5Model | None = None,
                teacher_params: Params | None = None, label_weight: float | None = None):
  """Mean loss over the batch's real target tokens, and the summed terms.

  With a teacher: (label_weight · CE + kd_weight · divergence + z-loss) / tokens, where
  label_weight defaults to 1 − kd_weight (0 on on-policy batches, whose targets are the
  student's own samples)."""
  logits = model.forward(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         dropout_rng=dropout_rng)
  sums = loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                   z_loss)
  # Mean over real target tokens: invariant to padding and bucket shapes.
  denom = jnp.maximum(sums["weight"], 1.0)
  if kd is None:
    return (sums["cross_entropy"] + sums["z_loss"]) / denom, sums
  teacher_logits = jax.lax.stop_gradient(teacher.forward(
      teacher_params, batch["encoder_input_tokens"], batch["decoder_input_tokens"]))
  sums.update(distill.kd_sums(logits, teacher_logits, batch["decoder_loss_weights"],
                              kd.divergence, kd.teacher_temperature))
  ce_weight = 1.0 - kd.kd_weight if label_weight is None else label_weight
  kd_weight = kd.kd_weight if label_weight is None else 1.0 - label_weight
  loss = (ce_weight * sums["cross_entropy"] + kd_weight * sums["kd"] + sums["z_loss"]) / denom
  return loss, sums


def on_policy_batch(model: T5Model, params: Params, batch: Mapping[str, jax.Array],
                    rng: jax.Array, temperature: float) -> dict[str, jax.Array]:
  """The batch with its targets replaced by sequences the model samples itself.

  Same inputs and target length T; rows without inputs (batch padding) get zero weight; the
  weights cover each sample up to and including its EOS."""
  enc = batch["encoder_input_tokens"]
  tokens, weights = sample_decode(model, jax.lax.stop_gradient(params), enc,
                                  batch["decoder_target_tokens"].shape[1], rng, temperature)
  weights = weights * jnp.any(enc > 0, axis=1, keepdims=True)
  tokens = jnp.where(weights > 0, tokens, 0)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": shift_right(tokens),
          "decoder_target_tokens": tokens, "decoder_loss_weights": weights}


def make_train_step(model: T5Model, tx: optax.GradientTransformation, z_loss: float = 1e-4,
                    use_dropout: bool = True, kd: distill.Distillation | None = None,
                    teacher: T5Model | None = None, on_policy: bool = False) -> Callable:
  """(state, batch, dropout_key[, teacher_params]) → (state, metrics); pure, for jit.

  The dropout key of step s is fold_in(dropout_key, s), so a resumed run
  draws the same masks as an uninterrupted one. With `kd` (and the teacher model) the step
  takes the teacher's params and adds the distillation loss; on_policy=True first replaces
  the batch's targets by the student's own samples (keys derived from the step as well)."""
  def step_fn(state: TrainState, batch, dropout_key, teacher_params=None):
    rng = jax.random.fold_in(dropout_key, state["step"]) if use_dropout else None
    label_weight = None
    if on_policy:
      sample_key = jax.random.fold_in(jax.random.fold_in(dropout_key, state["step"]), 1)
      batch = on_policy_batch(model, state["params"], batch, sample_key,
                              kd.on_policy_temperature)
      label_weight = 0.0
    grad_fn = jax.value_and_grad(
        lambda p: _batch_loss(model, p, batch, rng, z_loss, kd, teacher, teacher_params,
                              label_weight), has_aux=True)
    (loss, sums), grads = grad_fn(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(sums, loss=loss, grad_norm=optax.global_norm(grads))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics
  return step_fn


def make_eval_step(model: T5Model, z_loss: float = 1e-4, kd: distill.Distillation | None = None,
                   teacher: T5Model | None = None) -> Callable:
  """(params[, teacher_params], batch) → loss_sums dict (plus the KD terms with a teacher),
  teacher forced, no dropout."""
  if kd is None:
    return lambda params, batch: _batch_loss(model, params, batch, None, z_loss)[1]
  return lambda params, teacher_params, batch: _batch_loss(
      model, params, batch, None, z_loss, kd, teacher, teacher_params)[1]


def sample_decode(model: T5Model, params: Params, inputs: jax.Array, max_length: int,
                  rng: jax.Array | None = None, temperature: float = 1.0
                  ) -> tuple[jax.Array, jax.Array]:
  """inputs [B, S] → (tokens [B, max_length] int32, weights [B, max_length] float32).

  Ancestral sampling at `temperature` with key `rng` (rng None: greedy). tokens are 0 after
  EOS; weights are 1 up to and including each row's EOS. One decode_block call of k=1 per
  position; for validation and on-policy distillation (the engine is `decoding`)."""
  b = inputs.shape[0]
  encoded, mask = model.encode(params, inputs)
  cache = model.init_cache(params, encoded, mask, max_length)

  def body(t, carry):
    cache, prev, out, live, done = carry
    logits, cache = model.decode_block(params, cache, prev[:, None],
                                       jnp.full((b,), t, jnp.int32))
    if rng is None:
      tok = jnp.argmax(logits[:, 0], -1)
    else:
      tok = jax.random.categorical(jax.random.fold_in(rng, t), logits[:, 0] / temperature)
    tok = jnp.where(done, 0, tok.astype(jnp.int32))
    return (cache, tok, out.at[:, t].set(tok), live.at[:, t].set(~done),
            done | (tok == train_data.EOS_ID))

  init = (cache, jnp.zeros((b,), jnp.int32), jnp.zeros((b, max_length), jnp.int32),
          jnp.zeros((b, max_length), bool), jnp.zeros((b,), bool))
  _, _, tokens, live, _ = jax.lax.fori_loop(0, max_length, body, init)
  return tokens, live.astype(jnp.float32)


def greedy_decode(model: T5Model, params: Params, inputs: jax.Array,
                  max_length: int) -> jax.Array:
  """inputs [B, S] → greedy target tokens [B, max_length] (0 after EOS)."""
  return sample_decode(model, params, inputs, max_length)[0]


# ---------------------------------------------------------------------------
# Compiled once per setting

@functools.lru_cache(maxsize=4)
def jitted_steps(config: T5Config, tx: optax.GradientTransformation, z_loss: float,
                 use_dropout: bool, mesh: jax.sharding.Mesh,
                 kd: distill.Distillation | None = None, teacher_config: T5Config | None = None):
  """Jitted (train_step, on_policy_step, eval_step), cached so that repeated train() calls in
  one process (a resume in tests or notebooks) reuse the compiled executables. With `kd` the
  steps take the teacher's params after the dropout key (train) or the params (eval);
  on_policy_step is None unless kd.on_policy_fraction > 0."""
  model = T5Model(config)
  teacher = T5Model(teacher_config) if kd is not None else None
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  shardings = (replicated, rows, replicated) + ((replicated,) if kd is not None else ())

  def jit_step(on_policy):
    return jax.jit(make_train_step(model, tx, z_loss, use_dropout, kd, teacher, on_policy),
                   in_shardings=shardings, out_shardings=(replicated, replicated),
                   donate_argnums=0)
  on_policy = kd is not None and kd.on_policy_fraction > 0
  return (jit_step(False), jit_step(True) if on_policy else None,
          jitted_eval_step(config, z_loss, mesh, kd, teacher_config))


@functools.lru_cache(maxsize=4)
def jitted_eval_step(config: T5Config, z_loss: float, mesh: jax.sharding.Mesh,
                     kd: distill.Distillation | None = None,
                     teacher_config: T5Config | None = None):
  """make_eval_step jitted on `mesh`: params (and teacher params) replicated, batch rows split."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  teacher = T5Model(teacher_config) if kd is not None else None
  shardings = (replicated, replicated, rows) if kd is not None else (replicated, rows)
  return jax.jit(make_eval_step(T5Model(config), z_loss, kd, teacher), in_shardings=shardings,
                 out_shardings=replicated)


@functools.lru_cache(maxsize=4)
def jitted_greedy(config: T5Config) -> Callable:
  """(params, inputs [B, S], max_length) → greedy_decode's tokens [B, max_length], jitted."""
  return jax.jit(functools.partial(greedy_decode, T5Model(config)), static_argnums=2)


@functools.lru_cache(maxsize=4)
def jitted_init(config: T5Config) -> Callable:
  """Jitted random init (T5Model.init_params' computation), compiled once per config."""
  model = T5Model(config)
  enc = jnp.ones((1, 4), jnp.int32)
  return jax.jit(lambda rng: model.module.init(rng, enc, enc)["params"])


def resolve_model(model) -> T5Model:
  """MODEL as gin gives it (a T5Config, a T5Model or a size name) → T5Model."""
  if isinstance(model, T5Model):
    return model
  if isinstance(model, T5Config):
    return T5Model(model)
  if isinstance(model, str):
    return T5Model(get_config(model))
  raise ValueError(f"MODEL must be a T5Config, a T5Model or a size name, got {model!r}.")


# ---------------------------------------------------------------------------
# Throughput measurement

def benchmark_train_step(model: T5Config | str, batch_size: int = 64, input_length: int = 128,
                         target_length: int = 64, steps: int = 10, dropout_rate: float = 0.0,
                         seed: int = 0) -> dict:
  """Times the jitted train step on synthetic full-length tokens.
  Returns {"compile_s", "step_s", "examples_per_s"} (median over `steps`)."""
  model = resolve_model(model)
  if dropout_rate:
    model = T5Model(model.config.replace(dropout_rate=dropout_rate))
  rng = np.random.default_rng(seed)
  v = model.config.vocab_size
  tgt = rng.integers(2, v, (batch_size, target_length)).astype(np.int32)
  batch = {"encoder_input_tokens": rng.integers(2, v, (batch_size, input_length)).astype(
      np.int32), "decoder_target_tokens": tgt,
           "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
           "decoder_loss_weights": np.ones(tgt.shape, np.float32)}
  tx = optim.make_optimizer("adafactor")
  params = model.init_params(jax.random.key(seed))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  step_fn = jax.jit(make_train_step(model, tx, 1e-4, dropout_rate > 0), donate_argnums=0)
  key = jax.random.key(seed)
  t0 = time.time()
  state, m = step_fn(state, batch, key)
  jax.block_until_ready(m)
  compile_s = time.time() - t0
  times = []
  for _ in range(steps):
    t0 = time.time()
    state, m = step_fn(state, batch, key)
    jax.block_until_ready(m)
    times.append(time.time() - t0)
  step_s = float(np.median(times))
  return {"compile_s": compile_s, "step_s": step_s, "examples_per_s": batch_size / step_s}
