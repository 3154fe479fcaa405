"""Learning-rate schedules and optimizers of the trainer, as T5X configures them.

T5X's factor-string schedules ('constant * linear_warmup * rsqrt_decay') and Adafactor with
T5X's settings (or AdamW), as optax objects. gin binds both through `spec_cascade.train`
(`train_script.make_optimizer`, `train_script.create_learning_rate_schedule`), which
re-exports them.
"""
from __future__ import annotations

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def _memoize_by_arguments(fn):
  """Caches fn on its bound arguments (defaults applied): optimizers are pure
  functions of their hyper-parameters, and returning the same object lets
  repeated train() calls in one process (resume, tests) reuse compiled steps."""
  signature = inspect.signature(fn)
  cache: dict = {}

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    key = tuple(sorted(bound.arguments.items()))
    try:
      hash(key)
    except TypeError:  # e.g. a list argument: no caching
      return fn(*args, **kwargs)
    if key not in cache:
      cache[key] = fn(*args, **kwargs)
    return cache[key]
  return wrapper


_SCHEDULE_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay",
                     "cosine_decay", "linear_decay")


@_memoize_by_arguments
def create_learning_rate_schedule(factors: str = "constant * linear_warmup * rsqrt_decay",
                                  base_learning_rate: float = 0.5, warmup_steps: int = 1000,
                                  decay_steps: int | None = None,
                                  min_fraction: float = 0.0) -> optax.Schedule:
  """T5X-style schedule: the product of the factors named in `factors` ('a * b').

  constant: base_learning_rate. linear_warmup: min(1, step / warmup_steps).
  rsqrt_decay: 1 / sqrt(max(step, warmup_steps)) (T5 pre-training).
  rsqrt_normalized_decay: sqrt(warmup_steps / max(step, warmup_steps)).
  cosine_decay / linear_decay: from 1 at warmup_steps to min_fraction at
  decay_steps (required for these two), constant after.
  """
  names = [f.strip() for f in factors.split("*")]
  unknown = [f for f in names if f not in _SCHEDULE_FACTORS]
  if unknown or not names:
    raise ValueError(f"Unknown learning-rate factors {unknown} in {factors!r}; known: "
                     f"{list(_SCHEDULE_FACTORS)}.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
  needs_decay = {"cosine_decay", "linear_decay"} & set(names)
  if needs_decay and (decay_steps is None or decay_steps <= warmup_steps):
    raise ValueError(f"{sorted(needs_decay)} needs decay_steps > warmup_steps "
                     f"({warmup_steps}); got decay_steps={decay_steps}.")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = jnp.float32(1.0)
    for name in names:
      if name == "constant":
        lr = lr * base_learning_rate
      elif name == "linear_warmup":
        lr = lr * (jnp.minimum(1.0, step / warmup_steps) if warmup_steps else 1.0)
      elif name == "rsqrt_decay":
        lr = lr * jax.lax.rsqrt(jnp.maximum(step, max(warmup_steps, 1)))
      elif name == "rsqrt_normalized_decay":
        lr = lr * jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(step, max(warmup_steps, 1)))
      else:
        frac = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
        shape = 0.5 * (1 + jnp.cos(jnp.pi * frac)) if name == "cosine_decay" else 1 - frac
        lr = lr * (min_fraction + (1 - min_fraction) * shape)
    return lr

  return schedule


@_memoize_by_arguments
def make_optimizer(name: str = "adafactor",
                   learning_rate: optax.Schedule | float | None = None,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   decay_rate: float = 0.8, momentum: float | None = None,
                   clipping_threshold: float | None = 1.0,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """Adafactor as T5X uses it (factored second moments, decay 0.8, update
  clipping 1.0, relative step scaled by parameter RMS, no momentum), or AdamW.
  learning_rate: a schedule or float (None: create_learning_rate_schedule())."""
  lr = create_learning_rate_schedule() if learning_rate is None else learning_rate
  if name == "adafactor":
    tx = optax.adafactor(learning_rate=lr, decay_rate=decay_rate, momentum=momentum,
                         clipping_threshold=clipping_threshold,
                         multiply_by_parameter_scale=True,
                         weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    tx = optax.adamw(learning_rate=lr, b1=b1, b2=b2, weight_decay=weight_decay)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; use 'adafactor' or 'adamw'.")
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


@_memoize_by_arguments
def freeze(tx: optax.GradientTransformation,
           patterns: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """`tx` for every parameter but those whose 'a/b/c' name (T5X's: 'encoder/layers_0/mlp/
  wo/kernel') fully matches one of the regular expressions `patterns`: those keep their
  values (zero updates, no optimizer state). E.g. ('token_embedder/.*', 'encoder/.*') trains a
  drafter cut from its verifier while it keeps sharing the verifier's encoder. A pattern that
  names no parameter is an error (a typo would otherwise train everything)."""
  if not patterns:
    return tx
  regexes = [re.compile(p) for p in patterns]

  def labels(params):
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {k: "frozen" if any(r.fullmatch(k) for r in regexes) else "train" for k in flat}
    for p, r in zip(patterns, regexes):
      if not any(r.fullmatch(k) for k in flat):
        raise ValueError(f"frozen_params pattern {p!r} matches no parameter; names look like "
                         f"{sorted(flat)[0]!r} (regular expressions over the whole name).")
    return traverse_util.unflatten_dict(out, sep="/")

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
