"""Hugging Face T5 / T5 v1.1 / Flan-T5 / mT5: import (`config.json` + `model.safetensors`
or a sharded `model.safetensors.index.json`) and export.

HF tensor names map to our T5X-style paths (`hf_name`; docs/checkpoints.md has the
table), kernels are transposed lazily, and config.json fields that contradict each
other or our special tokens are refused rather than reinterpreted.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from spec_cascade.checkpoint_configs import _resolve_config
from spec_cascade.checkpoint_io import (LazyArray, Params, ShardingSpec, _np_dtype,
                                        _read_json_file, _scaled, _transposed, flatten,
                                        materialize)
from spec_cascade.models import T5Config, T5Model
from spec_cascade.safetensors_reader import read_safetensors_lazy

# HF activation names → ours. HF's gelu_new and gelu_pytorch_tanh are both the
# tanh approximation, which is our 'gelu'; HF's plain 'gelu' (erf) has no match.
_HF_ACT = {"relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "silu": "silu",
           "swish": "silu"}


def _hf_activations(feed_forward_proj: str) -> tuple[str, ...]:
  """HF `feed_forward_proj` → our mlp_activations (HF maps 'gated-gelu' to gelu_new)."""
  gated, act = _hf_proj_parts(feed_forward_proj)
  ours = _HF_ACT.get(act)
  if ours is None:
    raise ValueError(f"HF activation {act!r} (feed_forward_proj={feed_forward_proj!r}) has no "
                     "equivalent here: our 'gelu' is the tanh approximation (HF gelu_new); "
                     "supported: relu, gated-gelu, gated-silu, gated-relu.")
  return (ours, "linear") if gated else (ours,)


def _hf_proj_parts(feed_forward_proj: Any) -> tuple[bool, str]:
  """'gated-gelu' → (True, 'gelu_new'), 'relu' → (False, 'relu'): what HF itself derives."""
  if not isinstance(feed_forward_proj, str):
    raise ValueError(f"HF feed_forward_proj {feed_forward_proj!r} is not a string; expected "
                     "'relu', 'gated-gelu', 'gated-silu', ...")
  parts = feed_forward_proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f"Unknown HF feed_forward_proj {feed_forward_proj!r}; expected "
                     "'relu', 'gated-gelu', 'gated-silu', ...")
  act = parts[-1]
  return gated, ("gelu_new" if gated and act == "gelu" else act)


def _check_hf_activation_fields(hf: Mapping[str, Any], where: str) -> None:
  """Refuses a config.json whose dense_act_fn / is_gated_act contradict feed_forward_proj.

  transformers lets the stored dense_act_fn and is_gated_act override what it
  derives from feed_forward_proj, so when they disagree HF would run a different
  MLP than the one we would build from feed_forward_proj alone.
  """
  proj = hf.get("feed_forward_proj", "relu")
  gated, act = _hf_proj_parts(proj)
  dense = hf.get("dense_act_fn")
  # Different HF names for one function (gelu_new / gelu_pytorch_tanh) agree.
  same = dense == act or (isinstance(dense, str) and _HF_ACT.get(dense) is not None
                          and _HF_ACT.get(dense) == _HF_ACT.get(act))
  if dense is not None and not same:
    raise ValueError(f"{where}: dense_act_fn is {dense!r} but feed_forward_proj {proj!r} "
                     f"means {act!r}; the two disagree, so which MLP the checkpoint was "
                     "trained with is unclear. Fix config.json so they agree (e.g. "
                     "'gated-gelu' with 'gelu_new', 'relu' with 'relu').")
  is_gated = hf.get("is_gated_act")
  if is_gated is not None and is_gated is not gated:
    raise ValueError(f"{where}: is_gated_act is {is_gated!r} but feed_forward_proj {proj!r} "
                     f"means is_gated_act={gated}; the two disagree. Fix config.json so "
                     "they agree.")


# Special token ids our decoding hard-codes (T5's SentencePiece vocabularies).
_HF_TOKEN_IDS = {"decoder_start_token_id": (0, "the decoder's first input token"),
                 "eos_token_id": (1, "end of sequence"), "pad_token_id": (0, "padding")}


def _check_hf_token_ids(hf: Mapping[str, Any], where: str) -> None:
  """Refuses special token ids other than ours: decoding would silently use ours."""
  for field, (want, meaning) in _HF_TOKEN_IDS.items():
    value = hf.get(field)
    if value is None:
      continue  # not stated: nothing contradicts ours
    # Newer transformers may store eos_token_id as a list; [1] is fine.
    ok = (value == want or value == [want]) and not isinstance(value, bool)
    if not ok:
      raise ValueError(f"{where}: {field} is {value!r}, but this T5 implementation uses "
                       f"{want} ({meaning}) as in every T5 / T5 v1.1 / Flan-T5 / mT5 "
                       "checkpoint; a model with other special tokens cannot be decoded "
                       "here. Use a standard T5 checkpoint, or fix config.json if the value "
                       "is a mistake.")


def _hf_field(hf: Mapping[str, Any], key: str, default: Any, cast: type, where: str) -> Any:
  """hf[key] (or default) as `cast`; a value of the wrong kind names the field."""
  value = hf.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      cast is int and not float(value).is_integer()):
    kind = "an integer" if cast is int else "a number"
    raise ValueError(f"{where}: {key} is {value!r}, not {kind}; fix config.json.")
  return cast(value)


def config_from_hf(hf: Mapping[str, Any], *, logits_via_embedding: bool,
                   where: str = "HF config.json") -> T5Config:
  """A HF T5 config.json dict → T5Config.

  The output-layer layout is not in config.json alone (it also depends on
  whether lm_head is stored), so the caller passes `logits_via_embedding`.
  Fields that contradict each other or our special tokens are refused, never
  reinterpreted; `where` (the file) is named in every error.
  """
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise ValueError(f"Unknown layout: HF model_type {model_type!r} in {where}; T5 and mT5 "
                     "are supported (UMT5's per-layer position biases are not).")
  if "vocab_size" not in hf:
    raise ValueError(f"{where}: no vocab_size; a T5 config.json always has one. The file "
                     "is damaged or not a T5 config.")
  _check_hf_token_ids(hf, where)
  num_layers = _hf_field(hf, "num_layers", 6, int, where)
  try:
    _check_hf_activation_fields(hf, where)
    acts = _hf_activations(hf.get("feed_forward_proj", "relu"))
    return T5Config(
        vocab_size=_hf_field(hf, "vocab_size", None, int, where),
        emb_dim=_hf_field(hf, "d_model", 512, int, where),
        num_heads=_hf_field(hf, "num_heads", 8, int, where), num_encoder_layers=num_layers,
        num_decoder_layers=_hf_field(hf, "num_decoder_layers", None, int, where)
        if hf.get("num_decoder_layers") else num_layers,
        head_dim=_hf_field(hf, "d_kv", 64, int, where),
        mlp_dim=_hf_field(hf, "d_ff", 2048, int, where), mlp_activations=acts,
        dropout_rate=_hf_field(hf, "dropout_rate", 0.0, float, where),
        logits_via_embedding=logits_via_embedding,
        relpos_num_buckets=_hf_field(hf, "relative_attention_num_buckets", 32, int, where),
        relpos_max_distance=_hf_field(hf, "relative_attention_max_distance", 128, int, where),
        layer_norm_epsilon=_hf_field(hf, "layer_norm_epsilon", 1e-6, float, where))
  except ValueError as e:
    if where in str(e):
      raise
    raise ValueError(f"{where}: {e}") from None


def _hf_scales_output(hf: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before lm_head.

  transformers 5 saves `scale_decoder_outputs`; older configs say it through
  `tie_word_embeddings` (absent = True, the T5 v1.0 default).
  """
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False


_HF_ATTN = {"query": "q", "key": "k", "value": "v", "out": "o"}
# (our layer sub-path prefix, HF `layer.N` index and module) per stack.
_HF_ENC = {"pre_attention_layer_norm": "0.layer_norm", "attention": "0.SelfAttention",
           "pre_mlp_layer_norm": "1.layer_norm", "mlp": "1.DenseReluDense"}
_HF_DEC = {"pre_self_attention_layer_norm": "0.layer_norm", "self_attention": "0.SelfAttention",
           "pre_cross_attention_layer_norm": "1.layer_norm",
           "encoder_decoder_attention": "1.EncDecAttention",
           "pre_mlp_layer_norm": "2.layer_norm", "mlp": "2.DenseReluDense"}


def hf_name(path: str) -> tuple[str, bool]:
  """Our param path → (HF tensor name, transpose?). Raises on an unknown path."""
  fixed = {
      "token_embedder/embedding": ("shared.weight", False),
      "encoder/relpos_bias/rel_embedding":
          ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
      "decoder/relpos_bias/rel_embedding":
          ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
      "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
      "decoder/decoder_norm/scale": ("decoder.final_layer_norm.weight", False),
      "decoder/logits_dense/kernel": ("lm_head.weight", True),
  }
  if path in fixed:
    return fixed[path]
  m = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(\w+)/(\w+)/(kernel|scale)", path)
  m_norm = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(\w+)/scale", path)
  table = None
  if m_norm:
    stack, i, module = m_norm.groups()
    table = _HF_ENC if stack == "encoder" else _HF_DEC
    if module in table and table[module].endswith("layer_norm"):
      return f"{stack}.block.{i}.layer.{table[module]}.weight", False
  elif m:
    stack, i, module, sub, _ = m.groups()
    table = _HF_ENC if stack == "encoder" else _HF_DEC
    if module in table:
      hf_sub = sub if module == "mlp" else _HF_ATTN.get(sub)
      if hf_sub is not None:
        return f"{stack}.block.{i}.layer.{table[module]}.{hf_sub}.weight", True
  raise ValueError(f"No Hugging Face name for parameter {path}.")


# HF tensors that carry no information of their own: the embeddings tied to
# `shared`, and a cross-attention bias HF never uses.
_HF_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$|"
                         r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias")


_HF_INDEX = "model.safetensors.index.json"
# PyTorch pickles: named so a directory holding only these gets the conversion hint.
_HF_TORCH_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HF_CONFIG_FIX = "Download config.json again, or re-export the checkpoint."


def _hf_torch_only_error(path: str) -> FileNotFoundError:
  present = [f for f in _HF_TORCH_FILES if os.path.isfile(os.path.join(path, f))]
  found = f" (found {', '.join(present)})" if present else ""
  return FileNotFoundError(
      f"No model.safetensors (or {_HF_INDEX}) in {path}{found}; PyTorch .bin checkpoints are "
      "not read (convert them to safetensors: with transformers, "
      "T5ForConditionalGeneration.from_pretrained(path).save_pretrained(out, "
      "safe_serialization=True)).")


def _hf_index_files(path: str, index: str) -> list[str]:
  """The shard files a model.safetensors.index.json names, all present."""
  fix = f"Download {_HF_INDEX} again."
  weight_map = _read_json_file(index, fix).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index} has no 'weight_map' object ({{tensor name: shard file}}); "
                     f"the file is damaged or not a safetensors index. {fix}")
  bad = sorted(str(v) for v in weight_map.values() if not isinstance(v, str) or not v)
  if bad:
    raise ValueError(f"{index}: weight_map has shard names {bad[:3]} that are not file "
                     f"names. {fix}")
  files = sorted(set(weight_map.values()))
  missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"{index} names shards that are missing: {missing}.")
  return [os.path.join(path, f) for f in files]


def _hf_files(path: str) -> list[str]:
  index = os.path.join(path, _HF_INDEX)
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index):
    return _hf_index_files(path, index)
  if os.path.isfile(single):
    return [single]
  others = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if others:
    return [os.path.join(path, f) for f in others]
  raise _hf_torch_only_error(path)


def _hf_tensors(files: Iterable[str]) -> dict[str, LazyArray]:
  """All tensors of the shards; a name in two shards is refused (which one is right?)."""
  tensors: dict[str, LazyArray] = {}
  origin: dict[str, str] = {}
  for file in files:
    for name, lazy in read_safetensors_lazy(file).items():
      if name in tensors:
        raise ValueError(f"Tensor {name!r} is stored twice: in {origin[name]} and in {file}; "
                         "the shards come from different exports. Download the checkpoint "
                         "again.")
      tensors[name], origin[name] = lazy, file
  return tensors


def read_hf_lazy(path: str) -> tuple[dict[str, LazyArray], T5Config]:
  """{our param path: LazyArray (already in our layout)} and the derived config."""
  path = str(path)
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise FileNotFoundError(f"No config.json in {path}; not a Hugging Face checkpoint dir.")
  hf = _read_json_file(cfg_file, _HF_CONFIG_FIX)
  tensors = _hf_tensors(_hf_files(path))
  if "shared.weight" not in tensors:
    if "encoder.embed_tokens.weight" in tensors:  # some exports keep only this copy
      tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    else:
      raise ValueError(f"{path}: no 'shared.weight' tensor; unknown layout.")
  scale = _hf_scales_output(hf)
  head = tensors.pop("lm_head.weight", None)
  tied = head is None or (scale and np.array_equal(head.get(), tensors["shared.weight"].get()))
  config = config_from_hf(hf, logits_via_embedding=tied and scale, where=cfg_file)

  lazy: dict[str, LazyArray] = {}
  used = set()
  for p in flatten(T5Model(config).abstract_params()):
    if p == "decoder/logits_dense/kernel":
      continue
    name, transpose = hf_name(p)
    if name not in tensors:
      raise ValueError(f"{path}: HF tensor {name} (for parameter {p}) is missing.")
    lazy[p] = _transposed(tensors[name]) if transpose else tensors[name]
    used.add(name)
  if not config.logits_via_embedding:
    # The untied output layer: lm_head if stored, else the embedding (a
    # transformers-5 model ties lm_head to `shared` even for v1.1). A scaled
    # untied head (possible in HF) folds d_model**-0.5 into the kernel.
    src = _transposed(head if head is not None else tensors["shared.weight"])
    lazy["decoder/logits_dense/kernel"] = (
        _scaled(src, config.emb_dim ** -0.5) if scale else src)
  extra = sorted(n for n in tensors if n not in used and not _HF_IGNORED.match(n)
                 and n != "shared.weight")
  if extra:
    raise ValueError(f"{path}: unexpected HF tensors {extra[:5]} — unknown layout (e.g. "
                     "per-layer position biases as in UMT5).")
  return lazy, config



def load_hf(path: str, config: T5Config | None = None, dtype="float32",
            sharding: ShardingSpec = None) -> tuple[Params, T5Config]:
  """Imports a HF T5 directory → (params in our layout, config from config.json)."""
  lazy, stored = read_hf_lazy(path)
  config = _resolve_config(stored, config, {p: a.shape for p, a in lazy.items()},
                           f"HF checkpoint {path}")
  return materialize(lazy, dtype, sharding), config


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """T5Config → a HF T5 config.json dict."""
  acts = tuple(config.mlp_activations)
  if acts == ("relu",):
    proj = "relu"
  elif len(acts) == 2 and acts[1] == "linear" and acts[0] in ("gelu", "gelu_new", "silu", "relu"):
    proj = "gated-" + {"gelu_new": "gelu"}.get(acts[0], acts[0])
  else:
    raise ValueError(f"mlp_activations={acts} has no HF T5 feed_forward_proj equivalent.")
  tied = bool(config.logits_via_embedding)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
      "d_ff": config.mlp_dim, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relpos_num_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0, "feed_forward_proj": proj,
      "tie_word_embeddings": tied, "scale_decoder_outputs": tied,
      "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
      "decoder_start_token_id": 0, "use_cache": True,
  }


def export_hf(params: Params, config: T5Config, out_dir: str, dtype="float32") -> None:
  """Writes params as a HF T5 directory (config.json + model.safetensors)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  T5Model(config).check_params(params)
  dt = _np_dtype(dtype)
  tensors = {}
  for p, x in flatten(params).items():
    name, transpose = hf_name(p)
    x = np.asarray(jax.device_get(x)).astype(dt)
    tensors[name] = np.ascontiguousarray(x.T if transpose else x)
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_to_hf(config), f, indent=2)
