"""Deepening or widening a trained T5 without changing what it computes (function-preserving
growth).

A new layer is a copy of the trained layer before it with its output projections (attention
`out` and MLP `wo`) set to zero. T5 layers are pre-norm residual blocks, x + f(norm(x)), so
such a layer adds nothing: the deeper model's logits equal the original's exactly, and training
continues from the original's quality instead of from scratch. The zeroed projections get
gradients at once (their inputs are the copied layer's real activations), so the new layers
start learning on the first step. Used to turn the offline `mini` verifier into a deeper one
whose batch-1 decode step costs several drafter steps (docs/training.md).

    python -m spec_cascade.models.grow --src=spec_cascade/assets/offline_pair/verifier \
        --dst=runs/grown/verifier_d8 --num_decoder_layers=8

`widen` adds attention heads and MLP units the same way: each new one copies an existing
head's (unit's) input weights and gets zero output weights, so it adds nothing to the residual
stream. A widened model costs what a model of that width costs — which is what the verifier-scale
benchmark uses it for (bench/verifier_scale.py: the same tokens, the same acceptance, a larger
verifier's step) — and is a start for fine-tuning a wider one.

    python -m spec_cascade.models.grow --src=... --dst=... --num_heads=16 --mlp_dim=2560

The opposite cut (`keep_layers`, --keep_decoder_layers=0) keeps some of a model's layers: a
drafter that starts from its verifier's embeddings and encoder, to be distilled.
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from spec_cascade import gin_cli
from spec_cascade.models.configs import T5Config

Params = Any

# The projections whose output is added to the residual stream, per stack.
_RESIDUAL_OUTPUTS = {
    "encoder": (("attention", "out"), ("mlp", "wo")),
    "decoder": (("self_attention", "out"), ("encoder_decoder_attention", "out"), ("mlp", "wo")),
}


def layer_sources(old: int, new: int) -> list[tuple[int, bool]]:
  """For each of `new` layers: (index of the old layer it copies, whether it is a zeroed copy).

  The old layers keep their order and are spread evenly; each inserted layer sits right after
  the old layer it copies. old ≤ new.
  """
  if not 1 <= old <= new:
    raise ValueError(f"can only grow a stack of {old} layers to at least as many, got {new}.")
  # Old layer i is followed by extra[i] zeroed copies; the extras go to the earliest layers.
  extra = [(new - old) // old + (1 if i < (new - old) % old else 0) for i in range(old)]
  out = []
  for i in range(old):
    out.append((i, False))
    out.extend((i, True) for _ in range(extra[i]))
  return out


def _grow_stack(stack: dict, kind: str, old: int, new: int) -> dict:
  grown = {k: v for k, v in stack.items() if not k.startswith("layers_")}
  for j, (i, zeroed) in enumerate(layer_sources(old, new)):
    layer = copy.copy(dict(stack[f"layers_{i}"]))
    if zeroed:
      for block, proj in _RESIDUAL_OUTPUTS[kind]:
        block_params = dict(layer[block])
        block_params[proj] = {"kernel": jnp.zeros_like(block_params[proj]["kernel"])}
        layer[block] = block_params
    grown[f"layers_{j}"] = layer
  return grown


def deepen(params: Params, config: T5Config, *, num_encoder_layers: int | None = None,
           num_decoder_layers: int | None = None) -> tuple[T5Config, Params]:
  """A deeper (config, params) computing exactly what (config, params) computes.

  params: a T5 parameter tree in T5X's names (layers_0 … layers_{n-1} per stack).
  num_encoder_layers / num_decoder_layers: the new depths (None: unchanged), each ≥ the old.
  """
  enc = config.num_encoder_layers if num_encoder_layers is None else num_encoder_layers
  dec = config.num_decoder_layers if num_decoder_layers is None else num_decoder_layers
  params = jax.tree.map(lambda x: x, dict(params))
  params["encoder"] = _grow_stack(params["encoder"], "encoder", config.num_encoder_layers, enc)
  params["decoder"] = _grow_stack(params["decoder"], "decoder", config.num_decoder_layers, dec)
  return config.replace(num_encoder_layers=enc, num_decoder_layers=dec), params


_ATTENTION_BLOCKS = {"encoder": ("attention",),
                     "decoder": ("self_attention", "encoder_decoder_attention")}


def _append_copies(kernel: jax.Array, axis: int, group: int, old: int, new: int) -> jax.Array:
  """kernel with groups old..new-1 added along `axis`, group j a copy of group j mod old.

  A group is `group` consecutive entries (one head's head_dim columns, or one MLP unit).
  """
  idx = jnp.concatenate([jnp.arange(old * group),
                         (jnp.arange(old * group, new * group) // group % old) * group
                         + jnp.arange(old * group, new * group) % group])
  return jnp.take(kernel, idx, axis=axis)


def _append_zeros(kernel: jax.Array, axis: int, count: int) -> jax.Array:
  pad = [(0, 0)] * kernel.ndim
  pad[axis] = (0, count)
  return jnp.pad(kernel, pad)


def widen(params: Params, config: T5Config, *, num_heads: int | None = None,
          mlp_dim: int | None = None) -> tuple[T5Config, Params]:
  """A wider (config, params) computing what (config, params) computes.

  New heads (of the same head_dim) copy the query / key / value columns and relative-position
  bias of existing heads in turn, with zero rows in the attention's output projection; new MLP
  units copy existing units' input columns (every wi_*), with zero rows in wo. Each new one
  adds exactly zero to the residual stream, so the logits equal the original's up to the
  products' summation order over the longer inner dimension (float32 rounding).

  params: a T5 parameter tree in T5X's names; num_heads / mlp_dim: the new widths (None:
  unchanged), each ≥ the old.
  """
  if not isinstance(config, T5Config):
    raise ValueError(f"widen grows T5 models (encoder and decoder stacks), got a "
                     f"{type(config).__name__}.")
  heads = config.num_heads if num_heads is None else int(num_heads)
  mlp = config.mlp_dim if mlp_dim is None else int(mlp_dim)
  if heads < config.num_heads or mlp < config.mlp_dim:
    raise ValueError(f"can only widen to at least the current widths ({config.num_heads} "
                     f"heads, mlp_dim {config.mlp_dim}), got {heads} heads, mlp_dim {mlp}.")
  d, old_h, old_m = config.head_dim, config.num_heads, config.mlp_dim
  params = jax.tree.map(lambda x: x, dict(params))
  for kind in ("encoder", "decoder"):
    stack = dict(params[kind])
    if "relpos_bias" in stack:  # [heads, buckets]
      bias = dict(stack["relpos_bias"])
      bias["rel_embedding"] = _append_copies(bias["rel_embedding"], 0, 1, old_h, heads)
      stack["relpos_bias"] = bias
    for name in [k for k in stack if k.startswith("layers_")]:
      layer = dict(stack[name])
      for block in _ATTENTION_BLOCKS[kind]:
        attn = {k: dict(v) for k, v in layer[block].items()}
        for proj in ("query", "key", "value"):  # [emb, heads · head_dim], head-major
          attn[proj]["kernel"] = _append_copies(attn[proj]["kernel"], 1, d, old_h, heads)
        attn["out"]["kernel"] = _append_zeros(attn["out"]["kernel"], 0, (heads - old_h) * d)
        layer[block] = attn
      mlp_params = {k: dict(v) for k, v in layer["mlp"].items()}
      for proj in mlp_params:
        if proj.startswith("wi"):  # [emb, mlp]
          mlp_params[proj]["kernel"] = _append_copies(mlp_params[proj]["kernel"], 1, 1,
                                                      old_m, mlp)
      mlp_params["wo"]["kernel"] = _append_zeros(mlp_params["wo"]["kernel"], 0, mlp - old_m)
      layer["mlp"] = mlp_params
      stack[name] = layer
    params[kind] = stack
  return config.replace(num_heads=heads, mlp_dim=mlp), params


def keep_layers(params: Params, config: T5Config, *, encoder_layers: Sequence[int] | None = None,
                decoder_layers: Sequence[int] | None = None) -> tuple[T5Config, Params]:
  """A shallower (config, params): only the listed layers of each stack, in the given order.

  Everything else (embeddings, relative-position biases, final norms, logits) is kept. The
  result does not compute what the original does — it is a start for distilling a drafter
  from its own verifier (a layer-dropped copy shares the verifier's embeddings and encoder).
  encoder_layers / decoder_layers: indices into each stack (None: all); at least one each.
  """
  def pick(stack: dict, old: int, keep, kind: str) -> tuple[int, dict]:
    keep = list(range(old)) if keep is None else [int(i) for i in keep]
    if not keep or any(not 0 <= i < old for i in keep):
      raise ValueError(f"{kind} layers to keep must be a non-empty list of indices in "
                       f"0..{old - 1}, got {keep}.")
    out = {k: v for k, v in stack.items() if not k.startswith("layers_")}
    out.update({f"layers_{j}": stack[f"layers_{i}"] for j, i in enumerate(keep)})
    return len(keep), out

  params = dict(params)
  enc, params["encoder"] = pick(params["encoder"], config.num_encoder_layers, encoder_layers,
                                "encoder")
  dec, params["decoder"] = pick(params["decoder"], config.num_decoder_layers, decoder_layers,
                                "decoder")
  return config.replace(num_encoder_layers=enc, num_decoder_layers=dec), params


def _indices(text: str | None) -> list[int] | None:
  return None if text is None else [int(i) for i in text.split(",") if i.strip()]


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m spec_cascade.models.grow",
      description="Write a deeper copy of a T5 checkpoint that computes the same function "
                  "(new layers are zero-output copies), ready to fine-tune with "
                  "INITIAL_CHECKPOINT_PATH.")
  parser.add_argument("--src", required=True, help="checkpoint to grow (any format "
                      "spec_cascade.checkpoints.load_params reads)")
  parser.add_argument("--dst", required=True, help="output folder (a trainer export)")
  parser.add_argument("--num_encoder_layers", type=int, default=None)
  parser.add_argument("--num_decoder_layers", type=int, default=None)
  parser.add_argument("--num_heads", type=int, default=None,
                      help="widen every attention to this many heads (zero-output copies)")
  parser.add_argument("--mlp_dim", type=int, default=None,
                      help="widen every MLP to this many units (zero-output copies)")
  parser.add_argument("--keep_encoder_layers", default=None,
                      help="comma-separated layer indices to keep instead of growing "
                           "(e.g. 0,1,2,3)")
  parser.add_argument("--keep_decoder_layers", default=None,
                      help="comma-separated decoder layer indices to keep (e.g. 0): a "
                           "layer-dropped copy to distill a drafter from")
  args = parser.parse_args(argv)
  keep = args.keep_encoder_layers is not None or args.keep_decoder_layers is not None
  grows = [args.num_encoder_layers, args.num_decoder_layers, args.num_heads, args.mlp_dim]
  if keep and any(g is not None for g in grows):
    parser.error("--keep_*_layers does not combine with --num_*_layers / --num_heads / "
                 "--mlp_dim: grow or cut, not both.")
  # pylint: disable=import-outside-toplevel
  from spec_cascade import checkpoints, exports
  params, config = checkpoints.load_params(args.src)
  if keep:
    config, params = keep_layers(params, config,
                                 encoder_layers=_indices(args.keep_encoder_layers),
                                 decoder_layers=_indices(args.keep_decoder_layers))
    record = {"cut_from": str(args.src), "encoder_layers_kept": args.keep_encoder_layers,
              "decoder_layers_kept": args.keep_decoder_layers}
  else:
    config, params = deepen(params, config, num_encoder_layers=args.num_encoder_layers,
                            num_decoder_layers=args.num_decoder_layers)
    config, params = widen(params, config, num_heads=args.num_heads, mlp_dim=args.mlp_dim)
    record = {"grown_from": str(args.src)}
  exports.export_params(args.dst, params, config, None, record)
  print(f"wrote {args.dst}: {config.num_encoder_layers} encoder / "
        f"{config.num_decoder_layers} decoder layers, {config.num_heads} heads, mlp_dim "
        f"{config.mlp_dim}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
