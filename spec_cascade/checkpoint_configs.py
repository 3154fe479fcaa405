"""T5Config and checkpoints: its JSON form, inference from parameter shapes (T5X
checkpoints carry no config), and checks that a config matches a checkpoint.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from spec_cascade.checkpoint_io import flatten
from spec_cascade.models import T5Config, T5Model

# T5Config fields that decide parameter shapes or the network's function. The
# rest (dtype = activation dtype, dropout_rate) are run-time choices a caller may
# override freely when a checkpoint carries its own config.
_ARCH_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                "logits_via_embedding", "relpos_num_buckets", "relpos_max_distance",
                "layer_norm_epsilon")


def config_to_dict(config: T5Config) -> dict[str, Any]:
  """T5Config → JSON-able dict (tuples become lists)."""
  d = dataclasses.asdict(config)
  d["mlp_activations"] = list(d["mlp_activations"])
  return d


def config_from_dict(d: Mapping[str, Any], where: str = "Checkpoint config") -> T5Config:
  """Inverse of `config_to_dict`; unknown keys are an error (a newer writer).

  `where` names the source (e.g. the JSON file) in error messages.
  """
  if not isinstance(d, Mapping):
    raise ValueError(f"{where}: the config is a {type(d).__name__}, not a mapping of "
                     "T5Config fields; the file is damaged. Re-save the checkpoint.")
  known = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"{where} has fields {unknown} that T5Config does not know; "
                     "was it written by a newer spec_cascade?")
  try:
    return T5Config(**d)
  except (TypeError, ValueError) as e:  # T5Config checks its own field values
    raise ValueError(f"{where}: invalid T5Config ({e}). Fix the value or re-save the "
                     "checkpoint.") from None


def _check_config_agrees(stored: T5Config, given: T5Config, where: str) -> None:
  diffs = [f"{f}: checkpoint {getattr(stored, f)!r} vs given {getattr(given, f)!r}"
           for f in _ARCH_FIELDS if getattr(stored, f) != getattr(given, f)]
  if diffs:
    raise ValueError(f"The config passed for {where} disagrees with the checkpoint's own "
                     f"config ({'; '.join(diffs)}). Pass config=None to use the "
                     "checkpoint's config, or fix the config.")


def infer_config(shapes: Mapping[str, tuple[int, ...]], **overrides) -> T5Config:
  """T5Config from {param path: shape} in T5X's layout.

  A gated MLP (wi_0, wi_1) is taken as T5 v1.1's ('gelu', 'linear') and a single
  `wi` as v1.0's ('relu',); relpos_max_distance keeps its default (128), which
  the shapes cannot tell. Pass `overrides` (or a config) for anything else.
  """
  required = ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
              "encoder/layers_0/attention/query/kernel")
  missing = [p for p in required if p not in shapes]
  if missing:
    sample = sorted(shapes)[:6]
    raise ValueError(f"Unknown checkpoint layout: no {missing} among the parameters "
                     f"(first few: {sample}). Expected T5X's minimal T5 network layout.")
  vocab, emb = shapes["token_embedder/embedding"]
  heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
  layer_re = {s: re.compile(rf"^{s}/layers_(\d+)/") for s in ("encoder", "decoder")}
  num_layers = {s: len({m.group(1) for p in shapes if (m := r.match(p))})
                for s, r in layer_re.items()}
  mlp = sorted(p.split("/")[3] for p in shapes
               if p.startswith("encoder/layers_0/mlp/") and p.split("/")[3] != "wo")
  if mlp == ["wi"]:
    acts, mlp_dim = ("relu",), shapes["encoder/layers_0/mlp/wi/kernel"][1]
  elif mlp == ["wi_0", "wi_1"]:
    acts, mlp_dim = ("gelu", "linear"), shapes["encoder/layers_0/mlp/wi_0/kernel"][1]
  else:
    raise ValueError(f"Unknown MLP layout {mlp} in encoder/layers_0/mlp; expected 'wi' "
                     "(T5 v1.0) or 'wi_0', 'wi_1' (T5 v1.1). Pass a config.")
  fields = dict(
      vocab_size=int(vocab), emb_dim=int(emb), num_heads=int(heads),
      num_encoder_layers=num_layers["encoder"], num_decoder_layers=num_layers["decoder"],
      head_dim=int(shapes["encoder/layers_0/attention/query/kernel"][1]) // int(heads),
      mlp_dim=int(mlp_dim), mlp_activations=acts, relpos_num_buckets=int(buckets),
      logits_via_embedding="decoder/logits_dense/kernel" not in shapes)
  fields.update(overrides)
  return T5Config(**fields)


def check_shapes(config: T5Config, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
  """Raises ValueError naming the first missing/unexpected/mis-shaped parameter."""
  expected = {p: tuple(s.shape) for p, s in flatten(T5Model(config).abstract_params()).items()}
  missing = sorted(set(expected) - set(shapes))
  extra = sorted(set(shapes) - set(expected))
  if missing:
    raise ValueError(f"{where}: parameter {missing[0]} (shape {expected[missing[0]]}) is "
                     f"missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                     "the checkpoint does not match the config "
                     f"(mlp_activations={config.mlp_activations}, logits_via_embedding="
                     f"{config.logits_via_embedding}).")
  if extra:
    raise ValueError(f"{where}: unexpected parameter(s) {extra[:5]} for config {config}.")
  for p, want in expected.items():
    if tuple(shapes[p]) != want:
      raise ValueError(f"{where}: parameter {p} has shape {tuple(shapes[p])} in the "
                       f"checkpoint, the config expects {want}.")


def _resolve_config(stored: T5Config | None, given: T5Config | None,
                    shapes: Mapping[str, tuple[int, ...]], where: str) -> T5Config:
  if stored is not None and given is not None:
    _check_config_agrees(stored, given, where)
  config = given or stored or infer_config(shapes)
  check_shapes(config, shapes, where)
  return config
